"""Step 6, evaluate vs base: metrics with paired bootstrap intervals, results.json, report.html, chat."""
from __future__ import annotations

from .runner import evaluate, evaluate_after_training

__all__ = ["evaluate", "evaluate_after_training"]
