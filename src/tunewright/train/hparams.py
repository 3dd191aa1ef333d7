"""`auto` hyperparameters, chosen from the data (size, trained tokens), method, model size and hardware.

Every rule returns its value and a one-line reason; config.yaml records the reasons as comments and
the CLI prints them. The rules (also in the README):
- epochs (OpenAI's data-preparation guidance): 3 epochs, raised so that at least 100 examples are
  seen and lowered so that at most 25,000 are, within 1..25 epochs. With validation data and
  `early_stopping_patience: auto`, that is also the most the run trains: it evaluates often, stops
  when the validation loss has not improved for about an epoch, and keeps the best evaluation's
  weights. The learning rate decays over those epochs, so the best weights come where the rate is
  low: on stdlib-modules (docs/auto.md) 3 decaying epochs scored 0.834 where the same rate decaying
  over a 6-epoch ceiling peaked at 2 epochs, still at 80% of its rate, and scored 0.811 (issue 11:
  150 steps scored 0.74 on a one-word classification task where 450 scored 0.80).
- batch_size (examples per optimizer step): the largest of 32, 16, 8 that still gives at least
  300 optimizer steps over the target epochs (on CPU a step costs its tokens, not its count, so
  smaller batches buy more updates for free); 8 when none does. With few trained tokens per
  example (< 16: one-word answers) it is 8 regardless: each example's gradient is a few tokens'
  worth, and the measured gain came from more, smaller steps.
- eval_every: as often as keeps the validation-loss pass under 10% of training time (a forward
  pass costs about a third of forward+backward per token), and at least once per epoch; without
  validation data, about five times per run.
- eval_examples: every validation row, unless a pass every eval_every steps would still cost more
  than 10%: then a seeded sample that fits (at least 100 rows).
- early_stopping_patience: evaluations covering about one epoch (at least 2), with validation
  data and `epochs: auto`; off otherwise.
- best_metric (what "better evaluation" means for early stopping and the kept weights): eval_exact_match
  for SFT with short answers (< 16 trained tokens per example), where whole greedy answers are the task's
  score and it ranked checkpoints as held-out accuracy did while the loss did not; eval_loss otherwise.
- learning_rate: 2e-4 for LoRA/DoRA/QLoRA, 1e-4 for freeze, 2e-5 for full (1e-5 above 1B parameters).
  Preference objectives (dpo, orpo) use a tenth of that, about: 5e-5 for LoRA/DoRA/QLoRA, 2e-5 for
  freeze, 5e-6 for full (2e-6 above 1B). Why lower: SFT moves the model towards fixed targets, while
  DPO's loss has no floor on the log-probs themselves: it pushes the chosen and rejected answers apart,
  and a large step lowers the log-probability of both (the chosen answer too) and drifts far from
  the reference it is meant to stay near (the KL term beta only holds it back through the loss's
  curvature). Published recipes train full models at 5e-7 to 1e-6 (DPO paper, Zephyr; TRL's default
  1e-6) and ORPO at 8e-6, all with batches of 64-128 pairs; our smaller default batches (8-32) take
  noisier steps, so we sit a little above those and keep LoRA's usual ~10x over full fine-tuning.
- lr_range_test (learning_rate measured instead of the rule): on for LoRA/DoRA/QLoRA SFT when its
  30 micro-batch steps cost at most 20% of the planned training tokens (target epochs, or max_steps):
  on both tasks of docs/auto.md it chose about 2.5x the fixed rate (4.9e-4 and 3e-4, with its earlier
  lowest-point pick) and reached a lower validation loss and a better held-out score than 2e-4. Its pick
  (60% of the way down the loss's fall, `lr_range.pick_learning_rate`) is steadier across seeds than the rules before.
  Off elsewhere: short runs (a quick try, tests), full/freeze and preference tuning, where it was
  never compared against the rule.
- preference.beta: 0.1 (DPO paper, TRL and OpenAI's default; ORPO's lambda, same default in TRL).
- preference.shared_prompt: on for dpo / orpo where the model's attention takes a 4-D mask (SDPA, eager) and
  has no sliding window shorter than a row: each pair's prompt then goes through the model once for both answers
  (on the DPO benchmark's pairs, 50-token prompts and 29-token answers, a third fewer tokens per pair).
- micro_batch_tokens: 512 on CPU (as fast as 4,096 there, a third less memory), 16,384 on a GPU.
- precision: bf16 on GPUs that support it and on CPUs with avx512_bf16/amx_bf16; fp32 elsewhere
  (bf16 emulated on AVX2 ran ~100x slower than fp32, see docs/performance.md).
- threads: the CPU cores that other processes leave idle when the run starts (at least 1), from
  the machine's CPU time over half a second minus our own (train/cpu_usage.py): an OpenMP thread
  that has to share a core made training 4-5x slower, not 2x.
- bf16_base: all (every frozen weight stored in bf16; adapter and optimizer fp32) for LoRA/DoRA trained in bf16
  without FSDP/DeepSpeed: 1.38x tokens/s and -25% memory at a 0.5B shape, 1.06-1.095x and -15% at 135M on an
  avx512_bf16 CPU, validation loss level (docs/performance.md); off for fp32, qlora, full/freeze and sharding.
- save_every: eval_every (so the best evaluation is usually a checkpoint too).
- allocator: tcmalloc (else jemalloc) where installed and on Linux, preloaded by `tunewright train` restarting
  itself; glibc elsewhere. Recorded as what the process really runs with (allocator.py, docs/performance.md).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..allocator import loaded_allocator, running_choice
from ..config import ResolvedRunConfig, RunConfig
from ..errors import UserError
from .cpu_usage import WINDOW_S, idle_cores, measure_busy_elsewhere, usable_cores
from .preference_loss import AUTO_BETA, shared_prompt_obstacle

BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}  # CPU flags of native bf16 matmuls

TARGET_EPOCHS, MIN_EPOCHS, MAX_EPOCHS = 3, 1, 25  # OpenAI's fine-tuning data-preparation guidance
MIN_SEEN, MAX_SEEN = 100, 25_000  # examples seen over the run, same source
MIN_STEPS = 300  # optimizer steps worth having before batches grow
FEW_TRAINED_TOKENS = 16  # per example: one-word answers and labels
EVAL_SHARE = 0.10  # the most of training time the validation-loss pass may take
FORWARD_SHARE = 1 / 3  # a forward pass's cost per token against forward+backward
MIN_EVAL_EXAMPLES = 100  # a sampled validation loss on fewer rows is too noisy to stop on
RANGE_TEST_STEPS = 30  # micro-batch steps of the learning-rate range test (train/lr_range.py)
RANGE_TEST_SHARE = 0.20  # the most of the planned training tokens the learning-rate range test may cost (docs/auto.md:
# on stdlib-qa, at 14%, its rate ended the run in half the time at a higher score than the fixed rule)
BF16_BASE_METHODS = ("lora", "dora")  # qlora's base is 4-bit already; full/freeze keep fp32 masters of what they train
RANGE_TEST_METHODS = ("lora", "dora", "qlora")  # where it was measured against the fixed rule (docs/auto.md)


@dataclass(frozen=True)
class DataShape:
    """What the `auto` rules read from the tokenized data (pairs count as examples)."""

    examples: int
    trained_tokens: int = 0  # summed over the training examples
    tokens: int = 0  # their real tokens, prompt included
    validation_examples: int = 0
    validation_tokens: int = 0

    @property
    def trained_per_example(self) -> float:
        return self.trained_tokens / max(self.examples, 1)

    @property
    def tokens_per_example(self) -> float:
        return self.tokens / max(self.examples, 1)

    @classmethod
    def of(cls, train: Sequence, validation: Sequence = ()) -> DataShape:
        """From TokenizedExamples, or PreferencePairs (both answers count)."""
        def parts(item):
            return [item.chosen, item.rejected] if hasattr(item, "chosen") else [item]
        t = [p for item in train for p in parts(item)]
        v = [p for item in validation for p in parts(item)]
        return cls(len(train), sum(e.trained_tokens for e in t), sum(len(e.input_ids) for e in t),
                   len(validation), sum(len(e.input_ids) for e in v))


Choice = tuple  # (value, reason)


def auto_epochs(n_examples: int) -> Choice:
    """OpenAI's rule: 3 epochs, so that 100..25,000 examples are seen, within 1..25 epochs."""
    n = max(n_examples, 1)
    if n * TARGET_EPOCHS < MIN_SEEN:
        epochs = min(MAX_EPOCHS, math.ceil(MIN_SEEN / n))
        return epochs, f"{epochs} epochs: at least {MIN_SEEN} examples seen from {n_examples} (OpenAI's guidance)"
    if n * TARGET_EPOCHS > MAX_SEEN:
        epochs = max(MIN_EPOCHS, MAX_SEEN // n)
        return epochs, f"{epochs} epoch(s): at most ~{MAX_SEEN:,} examples seen from {n_examples:,} (OpenAI's guidance)"
    return TARGET_EPOCHS, f"{TARGET_EPOCHS} epochs over {n_examples:,} examples (OpenAI's guidance: 3, {MIN_SEEN}..{MAX_SEEN:,} seen)"


def auto_batch_size(n_examples: int, trained_per_example: float = FEW_TRAINED_TOKENS, epochs: float = TARGET_EPOCHS) -> Choice:
    """The largest of 32/16/8 that leaves >= 300 optimizer steps; 8 for few trained tokens per example."""
    if trained_per_example < FEW_TRAINED_TOKENS:
        return 8, f"8: {trained_per_example:.1f} trained tokens per example, so more, smaller steps"
    seen = n_examples * epochs
    for size in (32, 16):
        if seen / size >= MIN_STEPS:
            return size, f"{size}: the largest that leaves >= {MIN_STEPS} steps ({math.ceil(seen / size)})"
    return 8, f"8: {math.ceil(seen / 8)} steps over {epochs:g} epochs (fewer than {MIN_STEPS} even at 8)"


def auto_learning_rate(method: str, n_params: int, objective: str = "sft") -> float:
    preference = objective != "sft"
    if method in ("lora", "dora", "qlora"):
        return 5e-5 if preference else 2e-4
    if method == "freeze":
        return 2e-5 if preference else 1e-4
    if preference:
        return 2e-6 if n_params > 1_000_000_000 else 5e-6
    return 1e-5 if n_params > 1_000_000_000 else 2e-5


def eval_pass_in_steps(shape: DataShape, batch_size: int) -> float:
    """One validation-loss pass over every validation example, in training steps."""
    step_tokens = batch_size * max(shape.tokens_per_example, 1.0)
    return FORWARD_SHARE * shape.validation_tokens / step_tokens


def auto_eval_every(shape: DataShape, batch_size: int, steps: int) -> Choice:
    """Validation loss <= 10% of training time, at least once an epoch; ~5 times a run without validation."""
    if not shape.validation_examples:
        every = max(1, steps // 5)
        return every, f"{every}: about five evaluations in {steps} steps"
    per_epoch = steps_per_epoch_of(shape.examples, batch_size)
    eval_in_steps = eval_pass_in_steps(shape, batch_size)
    every = max(1, math.ceil(eval_in_steps / EVAL_SHARE))
    if every <= per_epoch:
        return every, (f"{every}: a validation pass ({shape.validation_tokens:,} tokens) costs ~{eval_in_steps:.1f} steps, "
                       f"<= {EVAL_SHARE:.0%} of training")
    return per_epoch, f"{per_epoch}: once an epoch, on a sample of the validation rows (see eval_examples)"


def auto_eval_examples(shape: DataShape, batch_size: int, eval_every: int) -> Choice:
    """All validation rows, or a sample small enough that a pass every `eval_every` steps costs <= 10% (>= 100 rows)."""
    n = shape.validation_examples
    eval_in_steps = eval_pass_in_steps(shape, batch_size)
    if not n or eval_in_steps <= EVAL_SHARE * eval_every:
        return None, f"all: {n} rows, <= {EVAL_SHARE:.0%} of training time" if n else "no validation data"
    sample = min(n, max(MIN_EVAL_EXAMPLES, math.floor(n * EVAL_SHARE * eval_every / eval_in_steps)))
    return sample, f"{sample} of {n} rows (seeded sample): the whole set every {eval_every} steps would cost {eval_in_steps / eval_every:.0%}"


def auto_patience(steps_in_epoch: int, eval_every: int) -> Choice:
    patience = max(2, round(steps_in_epoch / max(eval_every, 1)))
    return patience, f"{patience} evaluations (~1 epoch) without a better evaluation (best_metric) stop the run; the best weights are kept"


def steps_per_epoch_of(n_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(n_examples / batch_size))


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run in hardware here (emulated bf16 is far slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(cpu_flags() & BF16_CPU_FLAGS)


def auto_precision(device: torch.device) -> str:
    return "bf16" if native_bf16(device) else "fp32"


def threads_choice(busy_elsewhere: Callable[[], float] = measure_busy_elsewhere) -> Choice:
    """Cores that other processes leave idle now (never our own start-up's load: see cpu_usage)."""
    cores, busy = usable_cores(), busy_elsewhere()
    threads = idle_cores(cores, busy)
    return threads, f"{threads}: {cores} cores, {busy:.1f} busy with other processes over the last {WINDOW_S:g} s"


def auto_threads(busy_elsewhere: Callable[[], float] = measure_busy_elsewhere) -> int:
    return threads_choice(busy_elsewhere)[0]


def precision_choice(device: torch.device) -> Choice:
    if device.type == "cuda":
        return ("bf16", "bf16: this GPU supports it") if native_bf16(device) else ("fp32", "fp32: this GPU has no bf16")
    if native_bf16(device):
        return "bf16", "bf16: this CPU has native bf16 (avx512_bf16/amx_bf16)"
    return "fp32", "fp32: this CPU has no native bf16 (emulated bf16 is ~100x slower)"


def bf16_base_obstacle(cfg: RunConfig) -> str | None:
    """Why a bf16-stored base cannot serve this run (resolved precision and distributed), or None where it can."""
    if cfg.train.precision != "bf16":
        return f"precision is {cfg.train.precision}"
    if cfg.method not in BF16_BASE_METHODS:
        return f"{cfg.method} keeps its own base (qlora: 4-bit) or trains it (full/freeze)"
    if cfg.train.distributed != "ddp":
        return f"{cfg.train.distributed} manages its own low-precision copies"
    return None


def bf16_base_choice(cfg: RunConfig) -> Choice:
    """`train.bf16_base: auto` (after precision and distributed are resolved): every frozen weight in bf16 where it applies.

    Measured on an avx512_bf16 CPU (docs/performance.md, benchmarks/RESULTS.md): 1.38x tokens/s and 4.08 vs
    5.45 GB at a 0.5B shape, 1.06-1.095x and -15% memory at 135M, validation loss level with autocast's;
    storing only the linear weights (`true`) measured 0.92x at 135M, so `auto` never picks it.
    """
    if (obstacle := bf16_base_obstacle(cfg)) is not None:
        return False, f"off: {obstacle}"
    return "all", ("all: every frozen weight stored in bf16, adapter and optimizer fp32 (1.38x tokens/s, "
                   "-25% memory at 0.5B; docs/performance.md)")


def attention_choice() -> Choice:
    """`train.attention: auto`: transformers' dense mask, which measured faster end to end than the per-example lever.

    Per example (train/packed_attention.py) does less attention work (sum of L^2 / 2 instead of T^2 per packed
    row, no mask, no repeated keys) and is 1.9x faster on one layer, but a whole bf16 step on a quiet AMX CPU ran
    at 0.96x of the mask's, and on an H200 at 0.75x (docs/performance.md); it saves ~9% of peak memory on CPU.
    """
    return "mask", "mask: transformers' dense mask per packed row; per_example measured 0.96x end to end (CPU) and 0.75x (GPU)"


def _shared_prompt_obstacle(cfg: RunConfig, model_config) -> str | None:
    """The model's reason it cannot take shared-prompt rows; a row holds a pair, at most two max_seq_len sequences."""
    return shared_prompt_obstacle(model_config, 2 * cfg.data.max_seq_len)


def shared_prompt_choice(cfg: RunConfig, model_config) -> Choice:
    """`preference.shared_prompt: auto`: on for preference pairs wherever the model can take the rows' mask."""
    if cfg.objective == "sft":
        return False, "false: sft trains on no pairs"
    if model_config is None:
        return True, "true: each pair's prompt goes through the model once (checked against the model when it loads)"
    obstacle = _shared_prompt_obstacle(cfg, model_config)
    if obstacle is not None:
        return False, f"false: {obstacle}"
    return True, "true: each pair's prompt goes through the model once, for both answers"


def check_shared_prompt(cfg: RunConfig, model_config) -> None:
    """`preference.shared_prompt: true` on a model that cannot take it fails before training, with the way out."""
    if cfg.preference.shared_prompt is True and cfg.objective != "sft" and model_config is not None:
        obstacle = _shared_prompt_obstacle(cfg, model_config)
        if obstacle is not None:
            raise UserError(f"preference.shared_prompt=true, but this model cannot take it: {obstacle}",
                            "set preference.shared_prompt=false (or auto, which turns it off where it cannot work)")


def learning_rate_choice(method: str, n_params: int, objective: str) -> Choice:
    lr = auto_learning_rate(method, n_params, objective)
    kind = "preference tuning" if objective != "sft" else "SFT"
    return lr, f"{lr:g}: the fixed rule for {method} {kind} ({_count(n_params)} parameters)"


def planned_tokens(cfg: RunConfig, shape: DataShape, target_epochs: float) -> float:
    """Real tokens the run is expected to train on: its max_steps' worth, or its epochs' (before any early stop)."""
    if cfg.train.max_steps:
        return cfg.train.max_steps * int(cfg.train.batch_size) * shape.tokens_per_example
    return target_epochs * shape.tokens


def range_test_choice(cfg: RunConfig, shape: DataShape, target_epochs: float, lr_is_auto: bool) -> Choice:
    """Measure the learning rate when that is cheap next to the run and was shown to beat the rule for its kind.

    `cfg` has its batch size and micro-batch tokens resolved; `lr_is_auto` says whether the user left the rate to us.
    """
    t = cfg.train
    if not lr_is_auto:
        return False, "off: train.learning_rate is set"
    if cfg.objective != "sft" or cfg.method not in RANGE_TEST_METHODS:
        return False, f"off: measured against the fixed rule only for LoRA-family SFT, not {cfg.method} {cfg.objective}"
    cost, planned = RANGE_TEST_STEPS * int(t.micro_batch_tokens), planned_tokens(cfg, shape, target_epochs)
    if cost > RANGE_TEST_SHARE * planned:
        return False, (f"off: its ~{cost:,} tokens would be more than {RANGE_TEST_SHARE:.0%} of the run's "
                       f"~{planned:,.0f}; the fixed rule instead")
    return True, f"on: ~{cost:,} tokens, {cost / planned:.0%} of the run's ~{planned:,.0f}; it beat the fixed rule (docs/auto.md)"


def total_steps(cfg: RunConfig, n_examples: int) -> int:
    t = cfg.train
    if t.max_steps:
        return t.max_steps
    per_epoch = steps_per_epoch_of(n_examples, int(t.batch_size))
    return max(1, math.ceil(per_epoch * float(t.epochs)))


def _count(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n:,}"


SFT_METRICS = ("eval_loss", "eval_exact_match", "eval_token_accuracy")  # what TokenObjective's validation logs
PREFERENCE_METRICS = ("eval_loss", "eval_preference_accuracy")  # what PreferenceObjective's validation logs


def best_metric_choice(cfg: RunConfig, shape: DataShape) -> Choice:
    """`train.best_metric: auto`: exact match where the answers are short enough to be the task's score, else the loss.

    For labels and one-word answers, exact match (every answer token the greedy choice) is what greedy decoding
    scores, and on stdlib-modules it ranked an auto run's checkpoints as held-out accuracy did where the loss
    did not (steps 166 / 249: loss 0.209 / 0.213, exact match 0.824 / 0.874, held-out 0.795 / 0.818; docs/auto.md).
    Long answers are rarely matched whole, so there the loss is the finer measure.
    """
    if cfg.objective != "sft":
        return "eval_loss", f"eval_loss: {cfg.objective}'s validation loss per pair"
    if not shape.validation_examples:
        return "eval_loss", "eval_loss: no validation data, nothing is selected"
    if not shape.trained_tokens:
        return "eval_loss", "eval_loss: answer lengths not known yet (decided again when the data is tokenized)"
    per = shape.trained_per_example
    if per < FEW_TRAINED_TOKENS:
        return "eval_exact_match", (f"eval_exact_match: {per:.1f} trained tokens per example, so whole greedy answers "
                                    "are the score (ties go to the lower eval_loss)")
    return "eval_loss", f"eval_loss: {per:.0f} trained tokens per example, rarely matched whole"


def check_best_metric(cfg: RunConfig) -> None:
    """A best_metric the objective's validation does not log fails before training, with the ones it does."""
    metric = cfg.train.best_metric
    logged = SFT_METRICS if cfg.objective == "sft" else PREFERENCE_METRICS
    if metric != "auto" and metric not in logged:
        raise UserError(f"train.best_metric={metric}: {cfg.objective} validation does not log it",
                        f"set train.best_metric to one of: auto, {', '.join(logged)}")


def early_stopping_applies(cfg: RunConfig, shape: DataShape) -> bool:
    """`patience: auto` early-stops runs whose length is `auto` and that have validation data."""
    t = cfg.train
    return t.early_stopping_patience == "auto" and t.epochs == "auto" and not t.max_steps and shape.validation_examples > 0


def strategy_without_model(cfg: RunConfig) -> tuple[str, str]:
    """`train.distributed: auto` where the answer needs no model: DDP (or one process) for adapters and single processes.

    `train()` decides it earlier with the model in hand (`distributed.resolve_strategy`); this serves callers that
    resolve a config alone (job previews, tests) and refuses the one case that needs the model's size.
    """
    from .distributed import sharding_depends_on_size

    if not sharding_depends_on_size(cfg):
        return "ddp", "ddp: adapters and single processes never need sharding"
    raise ValueError("train.distributed=auto for a multi-process full run needs the model's size: "
                     "call train.distributed.resolve_strategy(cfg, model_dir) first")


def resolve_auto(cfg: RunConfig, data: DataShape | int, n_params: int, device: torch.device,
                 model_config=None) -> ResolvedRunConfig:
    """A copy of `cfg` with every `auto` replaced by its value (what goes into config.yaml).

    Its type says so: validating it as a ResolvedRunConfig fails on any `auto` left in `train` or `preference`.
    """
    return resolve_with_reasons(cfg, data, n_params, device, model_config)[0]


def resolve_with_reasons(cfg: RunConfig, data: DataShape | int, n_params: int, device: torch.device,
                         model_config=None) -> tuple[ResolvedRunConfig, dict[str, str]]:
    """`resolve_auto`, plus the rule or measurement behind each value, by dotted key.

    `data` counts preference pairs for dpo / orpo: a step's batch_size is pairs there. `model_config`
    (the loaded model's) decides what depends on the model's attention; without it, the rule's default.
    """
    check_shared_prompt(cfg, model_config)
    check_best_metric(cfg)
    shape = data if isinstance(data, DataShape) else DataShape(data)
    n = shape.examples
    early = early_stopping_applies(cfg, shape)
    lr_is_auto = cfg.train.learning_rate == "auto"
    cfg = cfg.model_copy(deep=True)
    t, why = cfg.train, {}

    def choose(section, key: str, value, reason: str) -> None:
        setattr(section, key, value)
        why[f"{'preference' if section is cfg.preference else 'train'}.{key}"] = reason

    if t.distributed == "auto":
        choose(t, "distributed", *strategy_without_model(cfg))
    target = auto_epochs(n) if t.epochs == "auto" else (float(t.epochs), "")
    if t.epochs == "auto":
        epochs, reason = target
        if early:
            reason += "; the rate decays over them, and early stopping (best_metric) may end the run sooner"
        choose(t, "epochs", epochs, reason)
    if t.learning_rate == "auto":
        choose(t, "learning_rate", *learning_rate_choice(cfg.method, n_params, cfg.objective))
    if t.batch_size == "auto":
        few = shape.trained_per_example if shape.trained_tokens else FEW_TRAINED_TOKENS
        size, reason = auto_batch_size(n, few, target[0])
        choose(t, "batch_size", min(size, max(1, n)), reason if size <= n else f"{n}: every example ({reason})")
    if t.micro_batch_tokens == "auto":
        gpu = device.type == "cuda"
        choose(t, "micro_batch_tokens", 16_384 if gpu else 512, "16384: GPU" if gpu else "512: as fast as 4096 on CPU, less memory")
    if cfg.preference.beta == "auto":
        choose(cfg.preference, "beta", AUTO_BETA, f"{AUTO_BETA}: the DPO paper's, TRL's and OpenAI's default")
    if cfg.preference.shared_prompt == "auto":
        choose(cfg.preference, "shared_prompt", *shared_prompt_choice(cfg, model_config))
    if t.precision == "auto":
        choose(t, "precision", *precision_choice(device))
    steps = total_steps(cfg, n)
    if t.eval_every == "auto":
        choose(t, "eval_every", *auto_eval_every(shape, int(t.batch_size), steps))
    if t.early_stopping_patience == "auto":
        if early:
            choose(t, "early_stopping_patience", *auto_patience(steps_per_epoch_of(n, int(t.batch_size)), int(t.eval_every)))
        else:
            off = "no validation data" if not shape.validation_examples else "the run's length is set (epochs or max_steps)"
            choose(t, "early_stopping_patience", None, f"off: {off}")
    if t.best_metric == "auto":
        choose(t, "best_metric", *best_metric_choice(cfg, shape))
    if t.lr_range_test == "auto":
        choose(t, "lr_range_test", *range_test_choice(cfg, shape, target[0], lr_is_auto))
    if t.eval_examples == "auto":
        choose(t, "eval_examples", *auto_eval_examples(shape, int(t.batch_size), int(t.eval_every)))
    if t.save_every == "auto":
        choose(t, "save_every", t.eval_every, f"{t.eval_every}: with each evaluation")
    if t.bf16_base == "auto":
        choose(t, "bf16_base", *bf16_base_choice(cfg))
    if t.attention == "auto":
        choose(t, "attention", *attention_choice())
    if t.allocator == "auto" or t.allocator != loaded_allocator()[0]:  # config.yaml records what really ran
        choose(t, "allocator", *running_choice(t.allocator))
    if t.threads == "auto":
        if device.type == "cpu":
            choose(t, "threads", *threads_choice())
        else:
            choose(t, "threads", torch.get_num_threads(), "torch's default next to a GPU")
    return ResolvedRunConfig.model_validate(cfg.model_dump()), why
