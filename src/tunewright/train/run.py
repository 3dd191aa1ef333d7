"""`tunewright.train(config)`: config -> data -> model -> loop -> run directory."""
from __future__ import annotations

import json
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from ..allocator import environment_record as allocator_record
from ..config import ResolvedRunConfig, RunConfig, to_yaml
from ..data.templates import CHATML_TEMPLATE
from ..errors import UserError
from ..models import load_for_inference, load_model, load_tokenizer, local_model_dir
from . import checkpoint as ckpt
from . import distributed
from .frozen_base import (
    bf16_base_applies,
    restore_frozen_base,
    store_frozen_base,
)
from .guards import check_output_dir, reconcile_resume
from .hparams import DataShape, native_bf16, resolve_with_reasons
from .loop import run_training
from .lr_range import measure_learning_rate, range_test_applies
from .methods import (
    apply_method,
    check_method_available,
    count_parameters,
    is_adapter_method,
    quantization_config,
)
from .neftune import add_embedding_noise
from .packed_attention import restore_attention, use_per_example_attention
from .summary import already_finished, build_summary, plot_loss_curve, print_summary
from .trackers import check_trackers_installed, tracker_hparams
from .writes import remove_quietly, replace_folder, write_text_atomic


@dataclass
class RunResult:
    run_dir: Path
    config: RunConfig
    summary: dict
    eval_results: dict | None = None  # filled by the evaluation step that follows training
    outputs: dict = field(default_factory=dict)
    model: object = field(default=None, repr=False)  # the trained model, still in memory, for evaluation
    tokenizer: object = field(default=None, repr=False)
    held_out: list = field(default_factory=list, repr=False)  # validation conversations
    is_main_process: bool = True


def default_run_dir(cfg: RunConfig) -> Path:
    name = Path(cfg.model).stem.lower().replace(" ", "-")
    return Path("runs") / f"{name}-{cfg.method}"


def check_run_dir(run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from; refuses to overwrite a finished or running run by accident."""
    if resume:
        return ckpt.resume_checkpoint(run_dir)  # the newest that verifies; UserError when none does
    taken = [p for p in ("adapter", "model", "checkpoints", "metrics.jsonl") if (run_dir / p).exists()]
    if taken:
        raise UserError(
            f"{run_dir}: already holds a run ({', '.join(taken)}); nothing was overwritten",
            "pass --resume to continue it, or choose another --output",
        )
    return None


def make_accelerator(cfg: RunConfig, run_dir: Path, model_dir: str | None = None):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    precision = cfg.train.precision
    cuda = torch.cuda.is_available()
    if precision == "fp16" and not cuda:
        raise UserError("train.precision=fp16 needs a CUDA GPU", "use bf16 or fp32 on CPU")
    hardware_bf16 = native_bf16(torch.device("cuda" if cuda else "cpu"))
    if precision == "bf16" and not hardware_bf16:
        Console(stderr=True).print("[yellow]warning:[/] train.precision=bf16 on a processor without native bf16 "
                                   "(no avx512_bf16/amx_bf16): emulated bf16 can be far slower than fp32")
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16", "auto": "bf16" if hardware_bf16 else "no"}[precision]
    trackers = cfg.train.report_to or None
    check_trackers_installed(cfg.train.report_to)
    # accelerate keeps one process-wide state that refuses a new precision; a second train() in the
    # same process (a notebook, the tests) may ask for another one: forget the last run's (process group stays)
    AcceleratorState._reset_state()
    plugins = distributed.accelerator_kwargs(cfg, model_dir) if model_dir else {}  # FSDP / DeepSpeed per train.distributed
    try:
        accelerator = Accelerator(mixed_precision=mixed, cpu=not cuda, log_with=trackers, project_dir=str(run_dir), **plugins)
    except (ImportError, ValueError) as e:
        raise UserError(f"train.report_to={trackers}: {e}", "install the tracker (tensorboard, mlflow or wandb) or remove report_to") from None
    distributed.route_fsdp_on_cpu(accelerator, plugins.get("fsdp_plugin"))
    return accelerator


def environment_info() -> dict:
    import importlib.metadata as md

    versions = {}
    for pkg in ("tunewright", "torch", "transformers", "peft", "accelerate", "datasets"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], check=False, capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except Exception:
        commit = ""
    return {"versions": versions, "python": platform.python_version(), "git_commit": commit, "machine": platform.machine(),
            "allocator": allocator_record()}


def train(cfg: RunConfig, resume: bool = False) -> RunResult:
    """Fine-tune per `cfg`; writes the run directory of DESIGN.md and returns what happened.

    The config passes through named stages: `requested` (what was asked, merged with the run's own
    config.yaml on --resume), `placed` (train.distributed decided), `decided` (plus what tokenizing
    decided: folder, template, format, split), `resolved` (every `auto` replaced) and `run_cfg` (the
    learning rate measured when asked): what config.yaml records and the loop reads.
    """
    from ..data import prepare_data

    started = time.perf_counter()
    run_dir = Path(cfg.output_dir) if cfg.output_dir else default_run_dir(cfg)
    check_output_dir(run_dir)  # in a second, not after tokenizing
    # --resume: the run's own resolved settings plus the changes a resume allows; conflicts exit 2
    requested, extended = reconcile_resume(cfg, run_dir) if resume else (cfg, False)
    check_method_available(requested)
    if requested.train.distributed == "deepspeed":
        distributed.require_deepspeed()  # before tokenizing: an optional extra that may be missing
    if not requested.data.train:
        raise UserError("no training data given", "pass --data FILE or set data.train in the config")
    if resume and not extended and (finished := already_finished(run_dir)) is not None:
        return RunResult(run_dir, requested, finished)  # --resume on a finished run changes nothing
    resume_from = check_run_dir(run_dir, resume)
    if resume_from is not None:
        distributed.refuse_deepspeed_resume(requested)
    torch.manual_seed(requested.train.seed)

    model_dir = local_model_dir(requested.model)
    tokenizer = load_tokenizer(model_dir, requested.chat_template, requested.trust_remote_code)
    placed = distributed.resolve_strategy(requested, model_dir)
    accelerator = make_accelerator(placed, run_dir, model_dir)
    with accelerator.main_process_first():  # one process tokenizes and fills the cache, the others read it
        data = prepare_data(placed, tokenizer)
    decided, split_note = _record_decisions(placed, run_dir, tokenizer, data.report)
    run_dir.mkdir(parents=True, exist_ok=True)
    model = load_model(model_dir, trust_remote_code=decided.trust_remote_code,
                       **_quant_kwargs(decided, accelerator.local_process_index))
    resolved, notes = resolve_with_reasons(decided, DataShape.of(data.train, data.validation),
                                           sum(p.numel() for p in model.parameters()), accelerator.device, model.config)
    notes.update(split_note)
    torch.set_num_threads(resolved.train.threads)  # once, here: `auto` counts the cores left idle after loading
    model = apply_method(model, resolved)
    # bf16 autocast would cast the frozen base in every forward: store it in bf16 once (put back after training)
    stored_base = store_frozen_base(model, resolved) if bf16_base_applies(resolved, accelerator.mixed_precision) else None
    # attention per example inside packed rows instead of a dense mask (put back after training)
    own_attention = use_per_example_attention(model) if resolved.train.attention == "per_example" else None
    noise = add_embedding_noise(model, resolved.train.neftune_alpha) if resolved.train.neftune_alpha > 0 else None
    measured = None
    if decided.train.learning_rate == "auto" and range_test_applies(resolved, accelerator.num_processes):
        measured = measure_learning_rate(model, data.train, resolved, accelerator, tokenizer.pad_token_id, run_dir)
    run_cfg = resolved if measured is None else measured[0]
    if measured is not None:
        notes["train.learning_rate"] = measured[1]
    _enable_gradient_checkpointing(model, run_cfg)
    params = count_parameters(model)
    if accelerator.is_main_process:
        _write_file(run_dir, "config.yaml", to_yaml(run_cfg, notes))  # a resume rewrites it: never leave it half written
        print_auto_reasons(notes, run_cfg.objective)
        _write_file(run_dir, "data_report.json", json.dumps(data.report, indent=2))
        _write_file(run_dir, "environment.json", json.dumps(environment_info(), indent=2))
    if run_cfg.train.report_to:
        accelerator.init_trackers("tunewright", config=tracker_hparams(run_cfg))

    result = run_training(model, data.train, data.validation, run_cfg, run_dir, accelerator, tokenizer.pad_token_id, resume_from)
    model = accelerator.unwrap_model(model)
    if noise is not None:
        noise.remove()
    if own_attention is not None:
        restore_attention(model, own_attention)
    if stored_base is not None:  # evaluation, RunResult.model and merges see the base as loaded, not bf16-rounded
        restore_frozen_base(model, stored_base, model_dir, decided.trust_remote_code)
    gathered = distributed.gather_model(model)  # a sharded model's full weights (every process takes part)
    summary_distributed = distributed.describe(accelerator)  # before end_training ends the process group
    # every process done with its last collective before any tears the group down: one process leaving gloo while
    # its peer still finished the gather aborted once in CI ("terminate called without an active exception")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    outputs = {}
    if accelerator.is_main_process:
        outputs = save_result(model, tokenizer, run_cfg, run_dir, model_dir, gathered.weights if gathered else None)
    if gathered is not None:  # evaluation runs on the main process alone: give it the saved, unsharded model
        model = load_for_inference(str(run_dir)).model if accelerator.is_main_process else None
    summary = build_summary(result, time.perf_counter() - started, params, run_cfg)
    summary["distributed"] = summary_distributed
    summary["frozen_base_bf16"] = stored_base is not None  # frozen_base.py: the base was stored in bf16 while training
    if run_cfg.objective != "sft":  # data.train / data.validation hold PreferencePairs
        summary.update({"objective": run_cfg.objective, "train_pairs": len(data.train), "validation_pairs": len(data.validation)})
    if accelerator.is_main_process:
        _write_file(run_dir, "summary.json", json.dumps(summary, indent=2))
        with ckpt.stop_if_write_fails(run_dir, run_dir / "loss_curve.png"):
            plot_loss_curve(run_dir / "metrics.jsonl", run_dir / "loss_curve.png")
        print_summary(summary, run_dir)
    if model is not None:
        model.eval()
    return RunResult(run_dir, run_cfg, summary, outputs=outputs, model=model, tokenizer=tokenizer,
                     held_out=data.validation_conversations, is_main_process=accelerator.is_main_process)


def _record_decisions(cfg: RunConfig, run_dir: Path, tokenizer, report: dict) -> tuple[RunConfig, dict[str, str]]:
    """`cfg` plus what the run decided before resolving `auto`, so its config.yaml reproduces it; and the notes.

    The run folder; the ChatML fallback (the only template load_tokenizer adds); `format: auto` as the
    detected format when every file agrees; `chat_template_kwargs: auto` as the values training rendered
    with (chat, eval and serve use them too); `validation_split: auto` as the share held out, with its reason.
    """
    data: dict = {}
    notes: dict[str, str] = {}
    found = {f.get("format") for f in report.get("files", [])}
    if cfg.data.format == "auto" and len(found) == 1 and None not in found:
        data["format"] = found.pop()
    if cfg.data.chat_template_kwargs == "auto":
        data["chat_template_kwargs"] = report["chat_template_kwargs"]
    if cfg.data.validation_split == "auto":
        from ..data.dataset import split_reason

        data["validation_split"] = report.get("validation_split") or 0.0
        notes["data.validation_split"] = split_reason(cfg.data, report)
    update: dict = {"output_dir": str(run_dir), "data": cfg.data.model_copy(update=data)}
    if cfg.chat_template is None and tokenizer.chat_template == CHATML_TEMPLATE:
        update["chat_template"] = tokenizer.chat_template
    return cfg.model_copy(update=update), notes


def _enable_gradient_checkpointing(model, cfg: ResolvedRunConfig) -> None:
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()


def print_auto_reasons(notes: dict[str, str], objective: str) -> None:
    """One line per `auto` value: what was chosen and why (config.yaml keeps the same words)."""
    console = Console(stderr=True, highlight=False)
    for key, reason in notes.items():
        if objective == "sft" and key.startswith("preference."):
            continue  # preference settings do nothing in an SFT run
        console.print(f"[dim]auto[/] {key} = {escape(reason)}", soft_wrap=True)


def _quant_kwargs(cfg: RunConfig, device_index: int) -> dict:
    """QLoRA loads the base in 4 bits, straight onto this process's GPU."""
    q = quantization_config(cfg)
    return {"quantization_config": q, "device_map": {"": device_index}} if q is not None else {}


def _write_file(run_dir: Path, name: str, text: str) -> None:
    """A run file, whole or not at all; a full disk stops the run with one message."""
    with ckpt.stop_if_write_fails(run_dir, run_dir / name):
        write_text_atomic(run_dir / name, text)


def save_result(model, tokenizer, cfg: RunConfig, run_dir: Path, base_dir: str, state_dict: dict | None = None) -> dict:
    """adapter/ for LoRA-family methods (stock PEFT loads it), model/ for full and freeze.

    Written into a temporary folder, then renamed: a full disk never leaves a half adapter/
    that PEFT would load half of, and never replaces a good one with a broken one.
    """
    out = run_dir / ("adapter" if is_adapter_method(cfg.method) else "model")
    tmp = run_dir / f".tmp-{out.name}"
    with ckpt.stop_if_write_fails(run_dir, out, partial=tmp):
        remove_quietly(tmp)  # what a run killed while writing it left
        _write_weights(model, tokenizer, cfg, tmp, base_dir, state_dict)
        replace_folder(tmp, out)
    return {"weights": str(out)}


def _write_weights(model, tokenizer, cfg: RunConfig, folder: Path, base_dir: str, state_dict: dict | None = None) -> None:
    model.save_pretrained(folder, state_dict=state_dict)  # state_dict: a sharded run's gathered weights
    if is_adapter_method(cfg.method):
        _point_adapter_at_base(folder, base_dir)
        (folder / "tunewright.json").write_text(json.dumps({"base_model": cfg.model, "base_model_dir": base_dir, "method": cfg.method}, indent=2))
    tokenizer.save_pretrained(folder)


def _point_adapter_at_base(adapter_dir: Path, base_dir: str) -> None:
    """adapter_config.json names a local folder stock `from_pretrained` can read (GGUF bases are dequantized)."""
    path = adapter_dir / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg["base_model_name_or_path"] = base_dir
    path.write_text(json.dumps(cfg, indent=2))
