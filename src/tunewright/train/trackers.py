"""`train.report_to`: what accelerate's experiment trackers need that it does not check itself."""
from __future__ import annotations

import json

from ..config import RunConfig
from ..errors import UserError


def check_trackers_installed(trackers: list[str]) -> None:
    """accelerate drops a known tracker whose package is missing with only a warning; the user asked for it: stop."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    available = {str(t) for t in get_available_trackers()}
    missing = [t for t in trackers if t in LoggerType.list() and t != "all" and t not in available]
    if missing:
        raise UserError(f"train.report_to: {', '.join(missing)} is not installed, so nothing would be logged to it",
                        f"pip install {' '.join(missing)}, or remove it from train.report_to")


def tracker_hparams(cfg: RunConfig) -> dict:
    """The resolved config as flat `section.key` scalars: TensorBoard's hparams take no nesting, lists or None."""
    flat: dict = {}

    def add(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                add(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix] = value
        else:
            flat[prefix] = json.dumps(value)  # lists and None, readable as in config.yaml

    add("", cfg.model_dump(mode="json"))
    return flat
