"""The command line: a thin layer that parses flags and calls one function of the Python API."""
from __future__ import annotations

import functools
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from .errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Fine-tune open language models, prove it, ship it.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect training data.")
app.add_typer(data_app, name="data")
err = Console(stderr=True)
_process_entry = False  # set by main(): only a process started as the CLI may restart itself (never a test's CliRunner)


def _preload_allocator(setting: str) -> None:
    """Restart this command once with train.allocator's library preloaded (allocator.py); a no-op in-process."""
    if _process_entry:
        from .allocator import preload_for_training

        preload_for_training(setting)


def _friendly(fn):
    """User mistakes become one red line and exit code 2; anything else is a bug (traceback, exit 1)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            # messages quote user data (roles, keys, paths): escape it so "[/x]" is text, not rich markup
            err.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False, markup=True, soft_wrap=True)
            if e.fix:
                err.print(f"[yellow]fix:[/] {escape(e.fix)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            err.print("[red]interrupted[/]")
            raise typer.Exit(130)

    return wrapper


@data_app.command("check")
@_friendly
def data_check(
    data: list[str] = typer.Argument(..., help="Files or folders (JSONL, JSON, CSV, Parquet)."),
    model: str | None = typer.Option(None, "--model", help="Tokenizer and chat template to measure with (default: the embedded SmolLM2)."),
    max_seq_len: int = typer.Option(1024, "--max-seq-len", help="Length above which examples would be truncated."),
    fmt: str = typer.Option("auto", "--format", help="auto | alpaca | messages | sharegpt | completion | text | dpo | preference"),
    validation: str | None = typer.Option(None, "--validation", help="A validation file to check for overlap with the training data."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    allow_any_role_order: bool = typer.Option(False, "--allow-any-role-order", help="Keep chats with roles out of order when the model's chat template renders them."),
):
    """Validate data files and report sizes, token lengths, duplicates and dataset-size guidance."""
    from .data.check import check_data, print_check_report
    from .models import EMBEDDED_DEFAULT, load_tokenizer, local_model_dir

    model = model or EMBEDDED_DEFAULT
    tokenizer = load_tokenizer(local_model_dir(model))  # only the tokenizer: data check never loads weights
    report = check_data(data, tokenizer, model, max_seq_len=max_seq_len, fmt=fmt, validation=validation, allow_any_role_order=allow_any_role_order)
    if as_json:
        import json

        typer.echo(json.dumps(report, indent=2))
    else:
        print_check_report(report)
    if report.get("bad_rows"):
        raise typer.Exit(2)


@app.command()
@_friendly
def train(
    config: Path | None = typer.Argument(None, help="YAML config (optional: flags and defaults suffice)."),
    model: str | None = typer.Option(None, "--model"),
    data: list[str] | None = typer.Option(None, "--data", help="Training data file or folder (repeatable)."),
    method: str | None = typer.Option(None, "--method", help="lora | dora | qlora | full | freeze"),
    output: str | None = typer.Option(None, "--output", help="Run directory."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a config key: --set train.learning_rate=1e-4"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint."),
):
    """Fine-tune a model on your examples."""
    from .config import load_config
    from .workflow import train_and_evaluate

    fields = {"model": model, "method": method, "output_dir": output}
    if data:
        fields["data__train"] = data[0] if len(data) == 1 else data
    cfg = load_config(config, overrides=set_ or [], **fields)
    _preload_allocator(cfg.train.allocator)
    train_and_evaluate(cfg, resume=resume)


@app.command()
@_friendly
def quickstart(
    output: str = typer.Option("runs/quickstart", "--output"),
    steps: int | None = typer.Option(None, "--steps", help="Cap the number of optimizer steps."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a config key, e.g. a short try: --set eval.limit=2 --set eval.max_new_tokens=16"),
):
    """The whole path on the embedded SmolLM2 and the example data: train, compare with the base, what next."""
    from .quickstart import quickstart_config, run_quickstart

    _preload_allocator(quickstart_config(output, steps, set_ or []).train.allocator)
    run_quickstart(output, max_steps=steps, overrides=set_ or [])


@app.command("eval")
@_friendly
def eval_(
    run_or_model: str = typer.Argument(..., help="A run directory, adapter folder, or model."),
    data: list[str] = typer.Option(..., "--data", help="Held-out examples."),
    compare_base: bool | None = typer.Option(None, "--compare-base/--no-compare-base", help="Also evaluate the base model (default: on for runs)."),
    limit: int | None = typer.Option(None, "--limit"),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="Default: the run's eval.max_new_tokens, else 256."),
    temperature: float | None = typer.Option(None, "--temperature", help="Default: the run's eval.temperature, else 0 (greedy)."),
    top_p: float | None = typer.Option(None, "--top-p", help="Default: the run's eval.top_p, else 1.0."),
    scorer: str | None = typer.Option(None, "--scorer", help="module:function(prompt, reference, answer) -> float"),
    output: str | None = typer.Option(None, "--output", help="Where eval/ goes (default: the run directory)."),
    as_json: bool = typer.Option(False, "--json"),
):
    """Evaluate on held-out examples, optionally against the base model, with confidence intervals."""
    from .evaluate import evaluate

    evaluate(run_or_model, data=data, compare_base=compare_base, limit=limit, max_new_tokens=max_new_tokens,
             temperature=temperature, top_p=top_p, scorer=scorer, output_dir=output, as_json=as_json)


@app.command()
@_friendly
def chat(
    run_or_model: str = typer.Argument(...),
    prompt: str | None = typer.Option(None, "--prompt", help="Answer once and exit."),
    system: str | None = typer.Option(None, "--system"),
    base: bool = typer.Option(False, "--base", help="Show the base model's answer beside it."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
    temperature: float = typer.Option(0.0, "--temperature"),
):
    """Chat with a model in the terminal."""
    from .evaluate.chat import chat as run_chat

    run_chat(run_or_model, prompt=prompt, system=system, show_base=base, max_new_tokens=max_new_tokens, temperature=temperature)


@app.command()
@_friendly
def merge(run: str = typer.Argument(...), output: str = typer.Option(..., "--output")):
    """Merge a LoRA/DoRA adapter into its base and save a standalone model."""
    from .export import merge as run_merge

    run_merge(run, output)


@app.command()
@_friendly
def export(
    run: str = typer.Argument(...),
    fmt: str = typer.Option("hf", "--format", help="hf | gguf"),
    quant: str = typer.Option("f16", "--quant", help="f32 | f16 | q8_0 (gguf)"),
    output: str = typer.Option(..., "--output"),
):
    """Export a run as Hugging Face safetensors or GGUF (+ Ollama Modelfile)."""
    from .export import export as run_export

    run_export(run, fmt=fmt, quant=quant, output=output)


@app.command()
@_friendly
def serve(
    models: list[str] = typer.Argument(..., help="Run directories, adapters or models to serve."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    api_key: str | None = typer.Option(None, "--api-key", envvar="TUNEWRIGHT_API_KEY"),
    database: str | None = typer.Option(None, "--database", help="Jobs database URL (default: sqlite in ./runs); "
                                           "postgresql://... to share it with `tunewright worker`s."),
    storage: str | None = typer.Option(None, "--storage", help="Folder for uploads and job runs, the same path on every "
                                          "worker (default: beside a SQLite database, ./runs with PostgreSQL)."),
    max_batch_size: int = typer.Option(16, "--max-batch-size"),
    engine: str = typer.Option("torch", "--engine", help="torch | vllm"),
    runs: str | None = typer.Option(None, "--runs", help="A folder of run folders (trained with tunewright train) to show, read-only, in the dashboard."),
):
    """Serve models with an OpenAI-compatible API and the dashboard at http://HOST:PORT/."""
    from .serve import serve as run_serve

    run_serve(models, host=host, port=port, api_key=api_key, database=database, max_batch_size=max_batch_size, engine=engine,
              runs_dir=runs, storage=storage)


@app.command()
@_friendly
def worker(
    database: str = typer.Option(..., "--database", help="The jobs database the server uses: postgresql://user@host/db."),
    storage: str | None = typer.Option(None, "--storage", help="The server's --storage folder, at the same path here."),
    nproc: int | None = typer.Option(None, "--nproc", help="Processes per job (default: one per local GPU; torchrun when >1)."),
    stale_after: float = typer.Option(60.0, "--stale-after", help="Seconds without a heartbeat before a job is re-queued."),
):
    """Run fine-tuning jobs from a shared database, one at a time, with all local devices (add machines, add capacity)."""
    from .serve.jobs_worker import run_worker

    run_worker(database, storage=storage, nproc=nproc, stale_after=stale_after)


@app.command()
@_friendly
def estimate(
    model: str = typer.Option("smollm2-135m-instruct", "--model"),
    method: str = typer.Option("lora", "--method"),
    seq_len: int = typer.Option(1024, "--seq-len"),
    gpu_memory: str | None = typer.Option(None, "--gpu-memory", help="e.g. 16GB"),
    micro_batch: int = typer.Option(1, "--micro-batch"),
    set_: list[str] | None = typer.Option(None, "--set", help="A config key that changes the count: --set lora.r=8, "
                                             "--set lora.target_modules=[q_proj,v_proj], --set freeze.trainable_layers=4"),
    gpus: int | None = typer.Option(None, "--gpus", help="Devices: adds memory per device under --strategy"),
    strategy: str = typer.Option("ddp", "--strategy", help="ddp (replicated), fsdp or zero3 (sharded)"),
    tokens: int | None = typer.Option(None, "--tokens", help="Training tokens (rows x tokens x epochs): adds a time estimate"),
    tflops: float | None = typer.Option(None, "--tflops", help="Sustained TFLOP/s per device (stated)"),
    tokens_per_s: float | None = typer.Option(None, "--tokens-per-s", help="Tokens/s per device (measured)"),
):
    """Estimate memory for a model, method and sequence length, from the model's config alone (no weights)."""
    from .train.estimate import estimate as run_estimate

    run_estimate(model, method=method, seq_len=seq_len, gpu_memory=gpu_memory, micro_batch=micro_batch, overrides=set_ or [],
                 gpus=gpus, strategy=strategy, tokens=tokens, tflops=tflops, tokens_per_s=tokens_per_s)


@app.command()
@_friendly
def sweep(
    config: Path = typer.Argument(..., help="YAML config (needs validation data: data.validation or data.validation_split)."),
    budget: str = typer.Option("30m", "--budget", help="Wall time for the whole search: 30m, 1h, 1h30m, 90s."),
    trials: int | None = typer.Option(None, "--trials", min=1, help="Stop after this many trials (default: as many as fit)."),
    output: str | None = typer.Option(None, "--output", help="Sweep folder (trial-NNN/, best -> the best trial, sweep.json)."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a config key for every trial."),
):
    """Search learning rate, LoRA rank, epochs and batch size on validation loss within a time budget."""
    from .config import load_config
    from .sweep import parse_budget, run_sweep

    seconds = parse_budget(budget)
    cfg = load_config(config, overrides=set_ or [], output_dir=output)
    _preload_allocator(cfg.train.allocator)
    run_sweep(cfg, seconds, max_trials=trials, source=str(config))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@_friendly
def bench(ctx: typer.Context):
    """Benchmark tunewright against Transformers Trainer + PEFT and TRL, side by side (from a source checkout)."""
    bench_script().main(list(ctx.args))


def bench_script(roots: list[Path] | None = None):
    """benchmarks/bench.py of the checkout this package runs from, or of the working directory.

    Benchmark code is not installed with the package; outside a checkout this says where to get it.
    """
    import importlib
    import sys

    for root in roots if roots is not None else [Path(__file__).resolve().parents[2], Path.cwd()]:
        script = root / "benchmarks" / "bench.py"
        if script.is_file():
            sys.path.insert(0, str(script.parent))  # bench.py imports its neighbours (bench_report, baselines)
            return importlib.import_module("bench")
    raise UserError("`tunewright bench` needs a source checkout: benchmarks/bench.py is not part of the installed package",
                    "clone the tunewright repository and run `make bench` (or `tunewright bench`) inside it")


def _quiet_libraries() -> None:
    """Library progress bars and deprecation chatter drown our own output; errors still show."""
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:
        pass


def main() -> None:
    global _process_entry
    _process_entry = True
    _quiet_libraries()
    app()


if __name__ == "__main__":
    main()
