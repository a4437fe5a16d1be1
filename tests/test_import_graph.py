"""No import cycle among the modules of `atr/`, found by parsing them (ast: nothing is imported or run).

Every import statement counts, at module level or inside a function (a lazy import that closes a circle is still a
circle: it only moves the failure to the first call). An edge goes from a module to the module it names: `from .x
import y` names `x`'s submodule `y` if there is one, else `x`. The packages a module sits in, which Python runs
first, are not edges: that is how packages work, not a circle the code made. `import evaluate` is the `evaluate`
library, never an atr module (DESIGN.md: the `evaluate.py` script at the repo top shadows that name); a cycle through
a module named `evaluate` (e.g. a CLI module of that name) is the one allowed.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "atr"


def module_names():
    """Each `atr` module's dotted name -> its file."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(name, path, modules):
    """The atr modules `name` imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.update(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target for alias in node.names)
    return {module for module in found if module in modules and module != name}


def find_cycles(graph):
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_graph_sees_module_level_and_lazy_imports():
    modules = module_names()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert "atr.search.index" in graph["atr.search.cli"]  # from .index import AudioIndex
    assert "atr.search.app" in graph["atr.search.cli"]  # lazy: from .app import serve
    assert "atr.cli_errors" in graph["atr.search.cli"]  # from ..cli_errors import ...
    assert "atr.modeling_atr" in graph["atr"]  # the package's own __init__
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_among_atr_modules_except_through_evaluate():
    modules = module_names()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    cycles = [group for group in find_cycles(graph) if not any(m.rpartition(".")[2] == "evaluate" for m in group)]
    assert cycles == [], f"import cycles among atr modules: {cycles}"
