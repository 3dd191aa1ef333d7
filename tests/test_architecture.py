"""Data flows one way: config -> data -> model -> train -> evaluate -> export/serve; the CLI is a leaf."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "tunewright"
# rank of each layer; a module may import only from layers of lower or equal rank
LAYERS = {"errors": 0, "config": 1, "data": 2, "models": 2, "gguf_config": 2, "train": 3, "evaluate": 4, "export": 5, "serve": 6}
LEAVES = {"cli", "quickstart", "bench", "bench_report", "workflow", "__init__"}


def _layer(module_path: Path) -> str:
    rel = module_path.relative_to(PKG).with_suffix("")
    return rel.parts[0]


def _imported_layers(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    depth_of = len(path.relative_to(PKG).parts) - 1  # folders below the package
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb to the package root, then take the first name
                up = node.level - 1
                if up < depth_of:
                    continue  # inside the same layer
                target = (node.module or "").split(".")[0] or (node.names[0].name if node.names else "")
                found.add(target)
            elif node.module and node.module.startswith("tunewright."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tunewright."):
                    found.add(alias.name.split(".")[1])
    return found


def test_no_module_reaches_back_up_the_chain():
    offenders = []
    for path in PKG.rglob("*.py"):
        layer = _layer(path)
        if layer in LEAVES:
            continue
        assert layer in LAYERS, f"{path}: new top-level module {layer!r}: give it a place in LAYERS"
        for target in _imported_layers(path):
            if target in LEAVES:
                offenders.append(f"{path.relative_to(PKG)} imports the leaf {target}")
            elif target in LAYERS and LAYERS[target] > LAYERS[layer]:
                offenders.append(f"{path.relative_to(PKG)} ({layer}) imports {target}, which comes later")
    assert not offenders, "\n".join(offenders)
