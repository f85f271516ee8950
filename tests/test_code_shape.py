"""Functions a reader can hold in their head (DESIGN, style 12): none in src/ is longer than MAX_LINES.

A function's length runs from its `def` line to its last line (decorators not counted, nested functions
counted in their parent and again on their own). Split a long one by meaning: a loop that calls named
steps, not a cut at line 80.
"""

from __future__ import annotations

import ast
from pathlib import Path

import scratchlm

SRC = Path(scratchlm.__file__).parent
MAX_LINES = 80


def _functions(tree: ast.Module):
    """(qualified name, node) of every function and method, nested ones included."""
    stack: list[tuple[str, ast.AST]] = [("", tree)]
    while stack:
        prefix, node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    yield name, child
                stack.append((f"{name}.", child))
            else:
                stack.append((prefix, child))


def _lengths() -> dict[str, tuple[int, int]]:
    """{"path:function": (line of its def, its length in lines)} over every module in src/scratchlm."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for name, node in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            out[f"{rel}:{name}"] = (node.lineno, node.end_lineno - node.lineno + 1)
    return out


def test_the_lengths_see_nested_functions_and_methods():
    tree = ast.parse("class A:\n    def f(self):\n        def g():\n            pass\n\n        return g\n")
    lengths = {name: node.end_lineno - node.lineno + 1 for name, node in _functions(tree)}
    assert lengths == {"A.f": 5, "A.f.g": 2}


def test_every_function_is_at_most_80_lines():
    lengths = _lengths()
    long = {key: v for key, v in lengths.items() if v[1] > MAX_LINES}
    offenders = [
        f"src/scratchlm/{key.split(':')[0]}:{line} {key.split(':')[1]} ({n} lines)"
        for key, (line, n) in sorted(long.items())
    ]
    assert not offenders, f"functions over {MAX_LINES} lines; split them by meaning:\n" + "\n".join(offenders)
