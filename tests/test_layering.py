"""The package's imports follow its stages: no module of a lower stage imports a higher one, at
module level or inside a function (io -> preprocessing -> data/models/losses/metrics ->
training/inference/unlabeled -> reporting -> workflows/evaluation -> cli)."""

from __future__ import annotations

import ast
from pathlib import Path

import kidneyssl

#: Stage of each top-level module/package of kidneyssl; a module may import its own stage or lower.
STAGES: dict[str, int] = {
    "__init__": 0, "errors": 0, "types": 0, "config": 0, "progress": 0, "system": 0, "io": 0,
    "preprocessing": 1,
    "data": 2, "models": 2, "losses": 2, "metrics": 2, "phantoms": 2,
    "training": 3, "inference": 3, "unlabeled": 3,
    "reporting": 4,
    "workflows": 5, "evaluation": 5,
    "cli": 6,
}
ROOT = Path(kidneyssl.__file__).parent


def _unit(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kidneyssl."):
            found.append((node.lineno, node.module.split(".")[1]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("kidneyssl.")]
    return found


def test_every_module_has_a_stage():
    units = {_unit(p) for p in ROOT.rglob("*.py")}
    assert units <= set(STAGES), sorted(units - set(STAGES))


def test_no_module_imports_a_higher_stage():
    violations = []
    for path in sorted(ROOT.rglob("*.py")):
        unit = _unit(path)
        for line, target in _imports(path):
            if target in STAGES and STAGES[target] > STAGES[unit]:
                violations.append(f"{path.relative_to(ROOT)}:{line}: {unit} (stage {STAGES[unit]}) imports "
                                  f"{target} (stage {STAGES[target]})")
    assert not violations, "\n".join(violations)


#: Flags of other programs that library messages may name (``tensorboard --logdir RUN``).
_OTHER_PROGRAMS_FLAGS = {"--logdir"}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def test_library_messages_name_no_command_line_flag():
    """Library code says what to do in words and names its options in ``remedy``; only ``cli/``
    turns them into flags (``kidneyssl.cli._common.describe_error``)."""
    import re

    flag = re.compile(r"(?<![\w-])--[a-z][a-z-]+")
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if _unit(path) == "cli":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                names = set(flag.findall(node.value)) - _OTHER_PROGRAMS_FLAGS
                if names:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {sorted(names)}")
    assert not found, "\n".join(found)


def test_every_remedy_has_a_command_line_form():
    """Each ``remedy=(...)`` named in the library is a known remedy with a CLI flag."""
    from kidneyssl.cli._common import REMEDY_FLAGS, describe_error
    from kidneyssl.errors import REMEDIES, RunFolderError

    assert set(REMEDY_FLAGS) == set(REMEDIES)
    used = set()
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "remedy" and isinstance(node.value, ast.Tuple):
                used |= {str(e.value).partition("=")[0] for e in node.value.elts if isinstance(e, ast.Constant)}
    assert used and used <= set(REMEDIES), sorted(used - set(REMEDIES))
    err = RunFolderError("RUN: holds a run; continue it or start over", remedy=("resume", "force"))
    assert describe_error(err) == "RUN: holds a run; continue it or start over (--resume, --force)"


def test_importing_kidneyssl_turns_on_huge_pages_for_torch_unless_the_user_chose() -> None:
    """``import kidneyssl`` sets THP_MEM_ALLOC_ENABLE=1 before torch loads (torch reads it at its
    first allocation), and leaves a value the user set alone."""
    import os
    import subprocess
    import sys

    code = "import os, kidneyssl, torch; print(os.environ['THP_MEM_ALLOC_ENABLE'])"
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    default = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    chosen = subprocess.run([sys.executable, "-c", code], env=dict(env, THP_MEM_ALLOC_ENABLE="0"),
                            capture_output=True, text=True, check=True)
    assert default.stdout.strip() == "1"
    assert chosen.stdout.strip() == "0"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the kidneyssl modules it imports (module level or inside functions; imports under
    ``if TYPE_CHECKING:`` never run and are left out; a parent package imported implicitly is not
    an edge)."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                for sub in node.body for n in ast.walk(sub)}
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kidneyssl"):
                deps |= {m for m in [node.module] + [f"{node.module}.{a.name}" for a in node.names] if m in modules}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in modules}
        graph[name] = deps - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_modules() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the detector works
    assert _cycles(_import_graph()) == []


def test_no_private_name_is_imported_across_modules() -> None:
    """``from kidneyssl.x import _name`` couples a module to another's internals."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kidneyssl"):
                found += [f"{path.relative_to(ROOT)}:{node.lineno}: {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, "\n".join(found)
