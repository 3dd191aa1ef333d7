"""`tunewright sweep`: search learning rate, LoRA rank, epochs and batch size within a time budget (Optuna)."""
from .space import SearchSpace, parse_budget
from .study import SweepResult, run_sweep

__all__ = ["SearchSpace", "SweepResult", "parse_budget", "run_sweep"]
