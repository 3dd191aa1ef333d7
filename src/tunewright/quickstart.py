"""`tunewright quickstart`: the whole path on the embedded SmolLM2 and the example data, in minutes on a CPU."""
from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from .config import load_config
from .errors import UserError

console = Console(stderr=True)


def example_data_dir() -> Path:
    """The stdlib-qa example set, shipped in the package (in a checkout, a link to examples/stdlib-qa)."""
    data = Path(str(resources.files("tunewright") / "example_data")).resolve()
    if not (data / "train.jsonl").is_file():
        raise UserError(f"the example data was not found in {data} (a damaged install?)",
                        "reinstall tunewright (pip install --force-reinstall tunewright), or run quickstart from a clone")
    return data


def quickstart_config(output: str, max_steps: int | None = None, overrides: list[str] | None = None):
    """A LoRA run sized to finish in a few minutes on 2 CPU cores (see README: Quickstart).

    `overrides` (`--set key=value`) come last, so a shorter try (`--set eval.limit=2`) wins over the defaults.
    """
    data = example_data_dir()
    settings = [
        "data.validation_split=0.05",
        "data.max_seq_len=512",
        f"train.max_steps={max_steps or 60}",
        "train.batch_size=8",
        "train.learning_rate=5e-4",
        "train.eval_every=20",
        "eval.limit=40",
        "eval.max_new_tokens=64",
        f"eval.data={data / 'test.jsonl'}",
        *(overrides or []),
    ]
    return load_config(model="smollm2-135m-instruct", method="lora", data__train=str(data / "train.jsonl"),
                       output_dir=output, overrides=settings)


def run_quickstart(output: str = "runs/quickstart", max_steps: int | None = None, overrides: list[str] | None = None) -> None:
    from .workflow import train_and_evaluate

    started = time.perf_counter()
    cfg = quickstart_config(output, max_steps, overrides)
    console.print(Panel.fit(
        f"Fine-tuning [bold]SmolLM2-135M-Instruct[/] (embedded) with LoRA on {cfg.data.train}\n"
        f"then comparing it with the base model on held-out questions. Run directory: [bold]{output}[/]",
        title="tunewright quickstart"))
    result = train_and_evaluate(cfg)
    minutes = (time.perf_counter() - started) / 60
    run = result.run_dir
    lines = [
        f"done in {minutes:.1f} min",
        f"adapter:        {run / 'adapter'}   (PeftModel.from_pretrained loads it)",
        f"metrics:        {run / 'metrics.jsonl'}, loss curve {run / 'loss_curve.png'}",
    ]
    if result.eval_results:
        lines.append(f"evaluation:     {run / 'eval' / 'report.html'}  (open it in a browser)")
    lines += [
        "",
        "next:",
        f"  tunewright chat {run} --prompt 'What does `json.dumps` do?'",
        f"  tunewright eval {run} --data {Path(str(cfg.eval.data))} --compare-base",
        f"  tunewright serve {run}        # OpenAI-compatible API on http://127.0.0.1:8000/v1",
        f"  tunewright export {run} --format gguf --output {run}/model.gguf",
    ]
    console.print(Panel("\n".join(lines), title="quickstart finished"))
