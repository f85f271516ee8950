"""No import cycles among scratchlm's modules, and no command importing another (DESIGN: dependencies
point one way).

Two graphs. The eager one holds the imports that run when a module is imported (module level, class
bodies): a cycle there can fail at import time, and none is allowed. The full one adds the imports
inside functions (lazy, for optional extras and a fast `--help`): lazy imports are fine, but not as a
way around a cycle (tokenizer.py ⇄ tokenizer_sp.py was one), so only the known ones below may close a
cycle there. Imports under `if TYPE_CHECKING:` never run and count in neither. Importing `a.b.c`
imports the packages `a.b` and `a` first, so those count too, except a module's own packages, which
are always being imported already when it runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import scratchlm

SRC = Path(scratchlm.__file__).parent

COMMANDS = "scratchlm.commands."  # one module per command; the package itself is not a command

# Lazy imports that close a cycle, known and being broken elsewhere: (importer, imported). Delete an
# entry when its cycle is gone; never add one for new code: put what both need one floor down.
KNOWN_LAZY: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = ("scratchlm", *path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(tree: ast.Module, lazy: bool):
    """Import statements that run at import time, and with `lazy` those in functions too."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif not lazy and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt))


def _graph(lazy: bool = False) -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        own = {".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 1)}
        targets = []
        for node in _imports(ast.parse(path.read_text(encoding="utf-8")), lazy):
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
                continue
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets.append(base)
            targets += [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
        for target in targets:
            parts = target.split(".")
            for k in range(1, len(parts) + 1):  # the target and the packages above it
                dep = ".".join(parts[:k])
                if dep in modules and dep not in own and dep != name:
                    graph[name].add(dep)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _command_to_command(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where both are modules under scratchlm/commands/."""
    return sorted(
        (a, b) for a, deps in graph.items() if a.startswith(COMMANDS) for b in deps if b.startswith(COMMANDS)
    )


def test_the_graphs_see_the_imports_they_should():
    eager, full = _graph(), _graph(lazy=True)
    assert "scratchlm.tokenizer" in eager["scratchlm.data.prepare"]  # from ..tokenizer import …
    assert "scratchlm.tokenizer.base" in eager["scratchlm.tokenizer.training"]  # from .base import …
    assert "scratchlm.tokenizer" not in eager["scratchlm.tokenizer.training"]  # its own package
    assert "scratchlm.config" in eager["scratchlm.tokenizer.training"]  # from ..config import …
    assert "scratchlm.data.corpus" not in full["scratchlm.tokenizer.training"]  # only if TYPE_CHECKING
    assert "scratchlm.trainer" not in eager["scratchlm.commands.train"]  # imported inside a function…
    assert "scratchlm.trainer" in full["scratchlm.commands.train"]  # …which the full graph sees
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_at_import_time():
    assert _cycles(_graph()) == [], "import cycle(s); put what both modules need one floor down"


def test_no_import_cycles_through_lazy_imports_but_the_known_ones():
    graph = _graph(lazy=True)
    for importer, imported in KNOWN_LAZY:
        graph[importer].discard(imported)
    assert _cycles(graph) == [], "import cycle(s); put what both modules need one floor down"


def test_no_command_imports_another_command():
    """A command calls the library, never another command: what two commands share goes one floor down.
    Until scratchlm/commands/ exists this holds vacuously."""
    assert _command_to_command(_graph(lazy=True)) == [], "a command imports another; move what both need down"


def test_the_command_check_bites():
    graph = {
        "scratchlm.commands.eval": {"scratchlm.commands", "scratchlm.scoring"},
        "scratchlm.commands.train": {"scratchlm.commands.eval", "scratchlm.trainer"},
        "scratchlm.cli": {"scratchlm.commands.train"},
    }
    assert _command_to_command(graph) == [("scratchlm.commands.train", "scratchlm.commands.eval")]
