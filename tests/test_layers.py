"""Lower layers never import higher ones (the order of the package docstring), checked on the source.

``sim`` sits above ``eval``: the simulation lab scores its policies with eval's metrics, and eval never
imports sim. The top-level private modules (``_atomic``, ``_cli``, ``_escape``, ``errors``) are shared
helpers every layer may use. Each subpackage's command module (``cli.py``, ``*_cli.py``) belongs to the
command-line layer, the top, with :mod:`rankalign.cli`: it may import any layer (lazily, inside the
command), so it is not checked here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "rankalign"
# known exceptions, each to be removed: (module, imported layer) -> why it is there
KNOWN: dict[tuple[str, str], str] = {}
ORDER = {"data": 0, "stats": 1, "losses": 2, "engine": 3, "reward": 4, "personal": 4, "train": 5, "online": 6,
         "eval": 7, "sim": 8, "arena": 9}


def imported_subpackages(path: Path, own: str) -> set[str]:
    """The rankalign subpackages a module imports (absolute ``rankalign.x`` or relative ``..x``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and node.module.startswith("rankalign."):
                found.add(node.module.split(".")[1])
            elif node.level == 2:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
            elif node.level == 0 and node.module == "rankalign":
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("rankalign."):
                    found.add(alias.name.split(".")[1])
    return {name for name in found if name in ORDER and name != own}


@pytest.mark.parametrize("package", sorted(ORDER))
def test_no_layer_imports_a_higher_one(package):
    for path in sorted((PACKAGE / package).rglob("*.py")):
        if path.name == "cli.py" or path.name.endswith("_cli.py"):
            continue  # the command-line layer
        for imported in imported_subpackages(path, package):
            if (str(path.relative_to(PACKAGE)), imported) in KNOWN:
                continue
            assert ORDER[imported] <= ORDER[package], (
                f"{path.relative_to(PACKAGE)} imports rankalign.{imported}, a higher layer than {package}")


def test_the_scan_sees_relative_and_absolute_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from .. import eval as e\nfrom ..train.run import X\nimport rankalign.sim.demo\n"
                      "from rankalign.data import read\nfrom . import sibling\n")
    assert imported_subpackages(module, "stats") == {"eval", "train", "sim", "data"}


def test_known_exceptions_are_still_real():
    """An exception that no longer happens must be deleted from KNOWN (so the list only shrinks)."""
    for (module, imported) in KNOWN:
        package = module.split("/")[0]
        assert imported in imported_subpackages(PACKAGE / module, package), f"{module} no longer imports {imported}"
