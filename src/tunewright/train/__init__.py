"""Step 5, train: one loop for LoRA, DoRA, QLoRA, full and freeze."""
from .run import RunResult, train

__all__ = ["RunResult", "train"]
