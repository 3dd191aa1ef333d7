"""The small public API (`tunewright.evaluate`, `tunewright.serve`, ...) shows its parameters to users and editors."""
from __future__ import annotations

import inspect

import pytest

import tunewright
from tunewright.errors import UserError
from tunewright.evaluate.runner import evaluate as evaluate_impl
from tunewright.export.merge import merge as _  # noqa: F401  (imports the subpackage tunewright.export)
from tunewright.serve import serve as serve_impl


@pytest.mark.parametrize("public, impl", [(tunewright.evaluate, evaluate_impl), (tunewright.serve, serve_impl)])
def test_public_functions_spell_out_the_parameters_of_what_they_call(public, impl):
    """No **kwargs hiding the signature, and the same names, defaults and types as the function called."""
    params = inspect.signature(public).parameters.values()
    assert not [p for p in params if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    assert inspect.signature(public) == inspect.signature(impl)


def test_every_public_function_has_named_parameters_only():
    for name in ("train", "evaluate", "merge", "export", "serve", "load_config"):
        params = inspect.signature(getattr(tunewright, name)).parameters.values()
        hidden = [p.name for p in params if p.kind == p.VAR_POSITIONAL or (p.kind == p.VAR_KEYWORD and name != "load_config")]
        assert not hidden, f"tunewright.{name} hides parameters behind {hidden}"


def test_public_functions_stay_callable_once_their_subpackages_are_imported(tmp_path):
    """tunewright.train() imports tunewright.evaluate; a later tunewright.evaluate() must still be the function."""
    missing = str(tmp_path / "missing.jsonl")
    with pytest.raises(UserError, match="missing.jsonl"):
        tunewright.evaluate(str(tmp_path), data=missing)
    with pytest.raises(UserError, match="no-such-run"):
        tunewright.export(str(tmp_path / "no-such-run"), output=str(tmp_path / "out"))
    with pytest.raises(UserError, match="no-such-config"):
        tunewright.train(str(tmp_path / "no-such-config.yaml"))
    assert callable(tunewright.serve)
