"""Data flows one way: config -> data -> models -> train -> evaluate -> (sweep) -> export -> serve; the CLI on top.

Every top-level module or subpackage has its own rank, and a module may import only from its own
layer or one ranked lower: `data` importing `models` (while `models` imports `data.templates`)
is an error. Inside the package no modules may import each other in a circle, lazily or not
(`serve/jobs.py` <-> `serve/jobs_routes.py` was one). The checker runs on a throwaway package
too, to prove that it catches both.
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "tunewright"
LAYERS = ["errors", "config", "allocator", "data", "gguf_config", "models", "train", "evaluate", "sweep", "export", "serve",
          "workflow", "quickstart", "__init__", "cli"]  # lowest first; `__init__` is the public API


def module_name(path: Path, root: Path) -> str:
    """`train.loop` for root/train/loop.py, `train` for root/train/__init__.py, `__init__` for the root's."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _package_of(name: str, path: Path) -> list[str]:
    """The package a module's relative imports start from."""
    if name == "__init__":
        return []
    parts = name.split(".")
    return parts if path.name == "__init__.py" else parts[:-1]


def _targets(node: ast.AST, name: str, path: Path, package: str, modules: set[str]) -> set[str]:
    """The package's modules one import statement reaches (a submodule, else the module it imports from)."""
    if isinstance(node, ast.Import):
        return {".".join(a.name.split(".")[1:]) or "__init__" for a in node.names if a.name.split(".")[0] == package}
    if not isinstance(node, ast.ImportFrom):
        return set()
    if node.level:
        base = _package_of(name, path)
        base = base[: len(base) - (node.level - 1)] + (node.module.split(".") if node.module else [])
    elif node.module and node.module.split(".")[0] == package:
        base = node.module.split(".")[1:]
    else:
        return set()
    source = ".".join(base) or "__init__"
    return {".".join([*base, a.name]) if ".".join([*base, a.name]) in modules else source for a in node.names}


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at the top or inside functions."""
    paths = {module_name(p, root): p for p in root.rglob("*.py")}
    modules, package = set(paths), root.name
    graph = {}
    for name, path in paths.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets |= _targets(node, name, path, package, modules)
        graph[name] = targets - {name}
    return graph


def layer(module: str) -> str:
    return module.split(".")[0]


def back_imports(graph: dict[str, set[str]], layers: list[str]) -> list[str]:
    """Each import of a later layer, and each module with no place in `layers`."""
    rank = {name: i for i, name in enumerate(layers)}
    problems = [f"{m}: new top-level module {layer(m)!r}: give it a place in LAYERS" for m in graph if layer(m) not in rank]
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer(module) in rank and rank.get(layer(target), -1) > rank[layer(module)]:
                problems.append(f"{module} ({layer(module)}) imports {target}, which comes later")
    return problems


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other in a circle (Tarjan's strongly connected components)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_module_reaches_back_up_the_chain():
    problems = back_imports(import_graph(PKG), LAYERS)
    assert not problems, "\n".join(problems)


def test_no_modules_import_each_other_in_a_circle():
    cycles = import_cycles(import_graph(PKG))
    assert not cycles, "\n".join(" <-> ".join(group) for group in cycles)


def _plant(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


CLEAN = {"__init__.py": "from .serve import run\n", "config.py": "", "data/__init__.py": "",
         "data/formats.py": "from ..config import X\n", "models.py": "from .data.formats import read\n",
         "serve/__init__.py": "from .app import run\n", "serve/app.py": "from . import jobs\nfrom ..models import load\n",
         "serve/jobs.py": "import pkg.data.formats\n"}


def test_the_checker_passes_a_clean_package_and_catches_a_planted_back_import(tmp_path):
    pkg = _plant(tmp_path / "pkg", CLEAN)
    layers = ["config", "data", "models", "serve", "__init__"]
    assert back_imports(import_graph(pkg), layers) == [] and import_cycles(import_graph(pkg)) == []
    _plant(pkg, {"data/formats.py": "from ..config import X\n\ndef f():\n    from ..models import load  # lazy, still a back-import\n"})
    assert back_imports(import_graph(pkg), layers) == ["data.formats (data) imports models, which comes later"]
    _plant(pkg, {"data/formats.py": "", "config.py": "import pkg.serve.app\n"})
    assert back_imports(import_graph(pkg), layers) == ["config (config) imports serve.app, which comes later"]
    _plant(pkg, {"config.py": "from . import run\n"})  # the public API, from below
    assert back_imports(import_graph(pkg), layers) == ["config (config) imports __init__, which comes later"]
    _plant(pkg, {"config.py": "", "export.py": ""})
    assert back_imports(import_graph(pkg), layers) == ["export: new top-level module 'export': give it a place in LAYERS"]


def test_the_checker_catches_a_planted_circle_inside_a_package(tmp_path):
    pkg = _plant(tmp_path / "pkg", CLEAN)
    _plant(pkg, {"serve/jobs.py": "def install():\n    from .app import routes\n"})
    assert import_cycles(import_graph(pkg)) == [["serve.app", "serve.jobs"]]
    _plant(pkg, {"serve/jobs.py": "from .routes import add\n", "serve/routes.py": "from .app import x\n"})
    assert import_cycles(import_graph(pkg)) == [["serve.app", "serve.jobs", "serve.routes"]]
