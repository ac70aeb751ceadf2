"""The package's imports follow its stages: no module of a lower stage imports a higher one, at
module level or inside a function (io -> preprocessing -> data/models/losses/metrics ->
training/inference -> reporting -> workflows/evaluation/unlabeled -> cli)."""

from __future__ import annotations

import ast
from pathlib import Path

import kidneyssl

#: Stage of each top-level module/package of kidneyssl; a module may import its own stage or lower.
STAGES: dict[str, int] = {
    "__init__": 0, "errors": 0, "types": 0, "config": 0, "progress": 0, "io": 0,
    "preprocessing": 1,
    "data": 2, "models": 2, "losses": 2, "metrics": 2, "phantoms": 2,
    "training": 3, "inference": 3,
    "reporting": 4,
    "workflows": 5, "evaluation": 5, "unlabeled": 5,
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
