"""No module of fednb imports another package's private modules or names (issue #21 item 7).

A package is ``fednb`` itself or one of its subpackages ``fednb.X`` (``fednb.client``,
``fednb.domain`` with ``fednb.domain.runner`` inside it, ...). A name is private when
it starts with one ``_`` (``_html``, ``_Model``; ``__init__`` and ``__version__`` are
not). A module may import the private modules and names of its own package; from any
other package it imports what that package's ``__init__`` or public modules export.
Top-level modules (``fednb/cli.py``, ``fednb/_cli_domain.py``) are outside every
subpackage, so ``fednb.cli`` may not import ``fednb.relay._cli``; any module may import
a private top-level module such as ``fednb._demo_data`` (it is private to ``fednb``).

The check reads every module under ``fednb/`` with :mod:`ast`: every ``import`` and
``from ... import`` statement, those inside functions and ``if TYPE_CHECKING:`` blocks
too, relative ones resolved against the importing module. Strings are not imports.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import fednb

ROOT = Path(fednb.__file__).resolve().parent


@dataclass(frozen=True)
class Crossing:
    """One import of a private module or name across packages."""

    path: str
    line: int
    statement: str
    target: str
    owner: str

    def __str__(self) -> str:
        return (f"{self.path}:{self.line}: {self.statement}  ({self.target} is private to {self.owner}: "
                f"import it from {self.owner} or a public module of it, exporting it there if need be)")


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def package_of(module: str, subpackages: frozenset[str]) -> str:
    """The package a module belongs to: ``fednb.X`` for a subpackage X, else ``fednb``."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "fednb" and parts[1] in subpackages:
        return f"fednb.{parts[1]}"
    return "fednb"


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...`` written in ``module``."""
    if level == 0:
        return name or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, name] if name else base)


def crossings(module: str, is_package: bool, source: str, path: str,
              subpackages: frozenset[str]) -> list[Crossing]:
    """Every import in ``source`` (the text of ``module``) of another package's private
    module or name."""
    mine = package_of(module, subpackages)
    found: list[Crossing] = []

    def check(node: ast.stmt, target: str) -> None:
        parts = target.split(".")
        if parts[0] != "fednb" or not any(_private(p) for p in parts[1:]):
            return
        owner = package_of(target, subpackages)
        if not _inside(mine, owner):
            found.append(Crossing(path, node.lineno, ast.unparse(node), target, owner))

    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check(node, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            if any(_private(p) for p in base.split(".")[1:]):
                check(node, base)
            else:
                for alias in node.names:
                    check(node, f"{base}.{alias.name}")
    return sorted(found, key=lambda c: c.line)


def _modules() -> list[tuple[str, bool, Path]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        is_package = rel.name == "__init__"
        name = ".".join(rel.parts[:-1] if is_package else rel.parts)
        out.append((name, is_package, path))
    return out


SUBPACKAGES = frozenset(p.parent.name for p in ROOT.glob("*/__init__.py"))


def test_no_module_imports_another_packages_private_modules() -> None:
    modules = _modules()
    assert len(modules) > 100 and "client" in SUBPACKAGES and "domain" in SUBPACKAGES
    found = [c for name, is_package, path in modules
             for c in crossings(name, is_package, path.read_text(), str(path.relative_to(ROOT.parent)),
                                SUBPACKAGES)]
    assert not found, "private imports across packages:\n" + "\n".join(map(str, found))


# --------------------------------------------------------------------------- the check itself

PACKAGES = frozenset({"client", "ui", "domain"})


def _found(module: str, source: str, is_package: bool = False) -> list[str]:
    return [c.target for c in crossings(module, is_package, source, "x.py", PACKAGES)]


def test_the_check_finds_every_form_of_private_import() -> None:
    source = (
        "import fednb.client._html\n"
        "import fednb.client._http as h\n"
        "from fednb.client._review import build_review\n"
        "from fednb.client import _templates\n"
        "from fednb.domain import _Secret\n"
        "def f():\n"
        "    from fednb.domain.runner._gpu import find\n"
        "if TYPE_CHECKING:\n"
        "    from fednb.domain._store import UserRow\n"
        "from .._cli_domain import ACTOR\n"  # a private top-level module: private to fednb, allowed
        "from ..client._html import esc\n"
    )
    assert _found("fednb.ui._models", source) == [
        "fednb.client._html", "fednb.client._http", "fednb.client._review", "fednb.client._templates",
        "fednb.domain._Secret", "fednb.domain.runner._gpu", "fednb.domain._store", "fednb.client._html",
    ]


def test_the_check_allows_public_names_own_package_and_strings() -> None:
    source = (
        "import fednb.client\n"
        "from fednb.client import Transport, connect\n"
        "from fednb.client.html import esc\n"
        "from fednb.ui._models import _label\n"  # the ui's own private name
        "from . import _console\n"
        "from ._review_html import review_html\n"
        "from fednb._demo_data import create\n"
        "from fednb import __version__\n"
        "import numpy._core\n"
        "importlib.import_module('fednb.client._html')\n"
        "s = 'from fednb.client._html import esc'\n"
    )
    assert _found("fednb.ui._models", source) == []
    assert _found("fednb.ui", "from ._models import InboxModel\n", is_package=True) == []
    assert _found("fednb.domain.runner._worker", "from fednb.domain._store import UserRow\n") == []


def test_top_level_modules_are_outside_every_subpackage() -> None:
    assert _found("fednb.cli", "from fednb.client._review import fmt\n") == ["fednb.client._review"]
    assert _found("fednb._cli_domain", "from fednb import _cli_review\nfrom .client import _http\n") == [
        "fednb.client._http"]
    assert _found("fednb", "from .client._html import esc\n", is_package=True) == ["fednb.client._html"]
