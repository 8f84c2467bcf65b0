"""The package's layering, as README's "How the code is organised" states it: read from the source files."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "wfvae"

#: Lowest first. A module may import from its own layer and the layers before it, never from a later one.
LAYERS: list[set[str]] = [
    {"errors", "formats", "layout", "checkpoint_keys"},
    {"utils", "downloads", "runtime"},
    {"models"},
    {"options"},
    {"data", "distributed", "networks"},
    {"losses", "evaluation"},
    {"inference"},
    {"config", "training", "train"},
    {"report"},
    {"demo"},
    {"cli", "__main__", "__init__"},
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _part(path: Path) -> str:
    """The top-level part of wfvae a file belongs to: its sub-package, or the module itself."""
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path):
    """``(line, imported part of wfvae, imported names)`` of every absolute wfvae import in ``path``."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("wfvae"):
            parts = node.module.split(".")
            names = [a.name for a in node.names]
            if len(parts) == 1:  # from wfvae import x: x is the part (or a name of the package root)
                for name in names:
                    # the package root's own names (__version__) are plain values, not a layer
                    yield node.lineno, name if name in LEVEL else "__version__", [name]
            else:
                yield node.lineno, parts[1], names
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "wfvae" and len(parts) > 1:
                    yield node.lineno, parts[1], []


FILES = sorted(SRC.rglob("*.py"))


def test_every_part_has_a_layer():
    assert {_part(p) for p in FILES} <= set(LEVEL), sorted({_part(p) for p in FILES} - set(LEVEL))


def test_layers_import_downward_only():
    upward = []
    for path in FILES:
        own = _part(path)
        for line, target, _ in _imports(path):
            if target == "__version__" or target == own:
                continue
            if LEVEL[target] > LEVEL[own]:
                upward.append(f"{path.relative_to(SRC)}:{line} ({own}) imports {target}")
    assert not upward, "\n".join(upward)


def test_no_private_names_across_modules():
    private = [f"{path.relative_to(SRC)}:{line} imports {name} from {target}"
               for path in FILES for line, target, names in _imports(path)
               for name in names if name.startswith("_") and not name.startswith("__")]
    assert not private, "\n".join(private)


def test_inference_does_not_import_training_and_utils_import_no_feature_package():
    for path in FILES:
        own = _part(path)
        targets = {target for _, target, _ in _imports(path)}
        if own == "inference":
            assert "training" not in targets and "config" not in targets, path
        if own == "utils":
            assert targets <= {"errors", "utils"}, (path, targets)
