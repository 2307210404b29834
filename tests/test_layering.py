"""The layers only look down: every import inside the project, parsed from the source, goes to a lower layer (or
within its own package), and no module imports itself back through others.

    base (version, errors, limits, config_base, named_parts, fileio, safe_pickle, progress) < models < conversion < selection
    < optimization, ground_truth (side by side, apart) < pipeline < the entry scripts main.py, model_converter.py
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.subprocesses import REPO

BASE = {"version", "errors", "limits", "config_base", "named_parts", "fileio", "safe_pickle", "progress"}
LAYERS = {
    **{name: 0 for name in BASE},
    "models": 1,
    "conversion": 2,
    "selection": 3,
    "optimization": 4,
    "ground_truth": 4,
    "pipeline": 5,
    "main": 6,
    "model_converter": 6,
}
LIBRARY = ["conversion", "models", "selection", "optimization", "ground_truth", "pipeline"]


def project_modules() -> dict[str, Path]:
    """Module name -> file, for the library packages and the top-level modules."""
    modules = {path.stem: path for path in REPO.glob("*.py") if path.stem in LAYERS}
    for package in LIBRARY:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports (relative imports resolved), at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from package import module` imports that module; `from module import name`, the module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def layer_of(module: str) -> tuple[int, str]:
    top = module.split(".")[0]
    return LAYERS[top], top


GRAPH = {name: imports_of(name, path, set(project_modules())) for name, path in project_modules().items()}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_only_look_down(module):
    level, package = layer_of(module)
    for target in GRAPH[module]:
        target_level, target_package = layer_of(target)
        assert target_level < level or target_package == package or (level == 0 and target_level == 0), (
            f"{module} (layer {level}) imports {target} (layer {target_level}): a lower layer may not import a "
            "higher one, nor a package beside it"
        )


def test_no_module_imports_itself_back():
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == "open":
                cycle = path[path.index(target) :] + [target] if target in path else [module, target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_the_results_table_loads_neither_torch_nor_matplotlib():
    code = (
        "import sys; import selection.table; "
        "print(sorted(m for m in ('torch', 'matplotlib', 'tensorflow') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
