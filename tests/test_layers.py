"""The package's shape (docs/architecture.md): each layer imports only those
below it (every import, at the top of a file or inside a function), no import
cycles, at most three modules at the top level, no Python file over 400 lines."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mrl_kernels"
# what each layer may import of the package (beside itself)
ALLOWED = {
    "ops": set(),
    "training": {"ops", "atomic", "modelfile"},
    "serving": {"ops", "atomic", "modelfile"},
    "distributed": {"ops"},
    "cli": {"ops", "training", "serving", "distributed", "atomic", "modelfile"},
    "modelfile": {"ops", "atomic"},
    "atomic": set(),
    "reference": {"ops"},
}
MAX_LINES = 400


def _name(path: Path) -> tuple[str, bool]:
    parts = path.relative_to(ROOT).with_suffix("").parts
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


MODULES = {_name(f)[0]: f for f in PACKAGE.rglob("*.py")}


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """The package's modules ``path`` imports (a ``from x import y`` of a
    module ``x.y`` counts as ``x.y``)."""
    name, is_package = _name(path)
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(base[:len(base) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {m for m in found if m in MODULES}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_each_layer_imports_only_those_below_it(path):
    layer = _layer(_name(path)[0])
    if layer not in ALLOWED:  # the package's own __init__ / __main__
        return
    leaving = {m for m in imports(path) if _layer(m) not in (layer, *ALLOWED[layer]) and m != "mrl_kernels"}
    assert not leaving, f"{path.relative_to(ROOT)} imports {sorted(leaving)} (the {layer} layer may import " \
                        f"{sorted(ALLOWED[layer]) or 'nothing'} of the package)"


def test_no_import_cycles():
    graph = {m: imports(f, top_level_only=True) - {m} for m, f in MODULES.items()}
    cycles, state = [], {}

    def visit(module, path):
        state[module] = "open"
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, f"import cycles: {cycles}"


def test_at_most_three_modules_at_the_top_level():
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(top) <= 3, top


@pytest.mark.parametrize("folder", ["mrl_kernels", "tests", "bench", "examples"])
def test_no_python_file_over_400_lines(folder):
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / folder).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
