"""Which category a test belongs to, read from its source so that new tests are marked
without anyone remembering to.

- ``oracle``: the test, a helper or fixture it uses, or its module (at import time)
  imports Synapse, directly or through a ``tests.*`` module, such as tests/oracle/.
- ``nats``: the test, or a fixture or helper it uses, starts a nats-server (the session
  server of tests/conftest.py, ``EmbeddedNatsServer``, or the process harness's
  ``NatsProcess``, ``nats_cluster`` and ``site``).
- ``faults``: the test lives in tests/faults/ (the worker as a process, disturbed).
- ``unit``: none of these; no server and no Synapse, so ``make test-fast`` runs it.

A test may also carry ``nats``, ``oracle`` or ``faults`` itself (``@pytest.mark.nats``)
for what the reading cannot see, such as a nats-server started inside a worker
subprocess; it is then not ``unit``.

The reading is static (Python's ``ast``): a function counts as using Synapse or a server
if its body names something that does, following module-level helpers, classes and
fixtures to a fixed point. Naming is enough; a false ``nats`` only moves a test out of
the fast set, never out of ``make test``.
"""

from __future__ import annotations

import ast
import functools
import inspect
import itertools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TESTS = Path(__file__).absolute().parents[1]
REPO = TESTS.parent

#: Module prefixes whose import makes a test an oracle test.
ORACLE_MODULES = ("synapse", "tests.oracle")
#: Names whose use starts a nats-server (fixtures of tests/conftest.py and harness parts).
NATS_NAMES = frozenset({"nats_server", "EmbeddedNatsServer", "NatsProcess", "nats_cluster", "site"})
CATEGORIES = ("unit", "nats", "oracle", "faults")
#: A file without any of these words cannot lead to Synapse or a server; it is not parsed.
_MENTIONS = re.compile(
    r"synapse|tests\.|from \.|" + "|".join(rf"\b{name}\b" for name in NATS_NAMES)
)


def _is_oracle_module(name: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in ORACLE_MODULES)


def _imported_modules(node: ast.AST, package: str) -> Iterable[str]:
    """Modules an import statement (or ``pytest.importorskip("…")``) brings in."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*parts, base] if base else parts)
        yield base
        yield from (f"{base}.{alias.name}" for alias in node.names)
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute | ast.Name)
        and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
        == "importorskip"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        yield node.args[0].value


def _module_path(name: str) -> Path | None:
    """The file of a ``tests.*`` module, or None for anything else."""
    if name != "tests" and not name.startswith("tests."):
        return None
    base = REPO.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@dataclass(slots=True)
class ModuleScan:
    """The categories of a module's import-time code and of its top-level definitions."""

    #: Categories found in the module's top-level statements (run at import).
    at_import: set[str] = field(default_factory=set)
    #: Top-level functions and classes: the categories of their bodies.
    defs: dict[str, set[str]] = field(default_factory=dict)

    def categories(self, name: str) -> set[str]:
        return self.at_import | self.defs.get(name, set())


def _scan(path: Path) -> ModuleScan:
    text = path.read_text(encoding="utf-8")
    scan = ModuleScan()
    if not _MENTIONS.search(text):
        return scan  # names nothing that could lead to Synapse or a server
    package = ".".join(path.relative_to(REPO).parts[:-1])
    #: Names imported from other ``tests.*`` modules, with their categories there.
    imported: dict[str, set[str]] = {}
    uses: dict[str, set[str]] = {}
    for stmt in ast.parse(text, str(path)).body:
        names, modules = _uses(stmt, package)
        direct = {"nats"} if names & NATS_NAMES else set()
        if any(_is_oracle_module(module) or _needs_oracle(module) for module in modules):
            direct.add("oracle")
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            scan.defs[stmt.name] = direct
            uses[stmt.name] = names
            continue
        scan.at_import |= direct
        if isinstance(stmt, ast.ImportFrom):
            source = _module_path(next(iter(_imported_modules(stmt, package))))
            if source is not None:
                there = scan_module(source).defs
                for alias in stmt.names:
                    imported[alias.asname or alias.name] = there.get(alias.name, set())
    # A definition inherits the categories of what it names (to a fixed point).
    changed = True
    while changed:
        changed = False
        for name, used in uses.items():
            before = len(scan.defs[name])
            for other in used:
                scan.defs[name] |= scan.defs.get(other, imported.get(other, set()))
            changed |= len(scan.defs[name]) != before
    return scan


def _uses(node: ast.AST, package: str) -> tuple[set[str], set[str]]:
    """The names a piece of code uses (loads, attributes, parameters, which is how
    fixtures are asked for) and the modules it imports."""
    names: set[str] = set()
    modules: set[str] = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Name):
            names.add(child.id)
        elif isinstance(child, ast.Attribute):
            names.add(child.attr)
        elif isinstance(child, ast.arg):
            names.add(child.arg)
        elif isinstance(child, ast.Import | ast.ImportFrom | ast.Call):
            modules.update(_imported_modules(child, package))
    return names, modules


_SCANS: dict[Path, ModuleScan] = {}


def scan_module(path: Path) -> ModuleScan:
    """The scan of one file, made once. A module met again while its own scan is under
    way (an import cycle) reads as empty until the scan is done."""
    if path not in _SCANS:
        _SCANS[path] = ModuleScan()
        _SCANS[path] = _scan(path)
    return _SCANS[path]


@functools.cache
def _needs_oracle(module: str) -> bool:
    """Whether importing a ``tests.*`` module imports Synapse."""
    path = _module_path(module)
    return path is not None and "oracle" in scan_module(path).at_import


@functools.cache
def _file_categories(filename: str, name: str) -> frozenset[str]:
    """The categories of one top-level definition of a file under tests/."""
    path = Path(filename)
    if path.suffix != ".py" or not path.is_relative_to(TESTS):
        return frozenset()
    return frozenset(scan_module(path).categories(name))


def categories_of(item: pytest.Item) -> set[str]:
    """The categories of one collected test (a subset of CATEGORIES, never empty)."""
    found: set[str] = set()
    if isinstance(item, pytest.Function):
        owner = item.cls.__name__ if item.cls is not None else item.originalname
        found |= _file_categories(str(item.path), owner)
        # Every fixture the test requests, directly or through other fixtures.
        for name, defs in item._fixtureinfo.name2fixturedefs.items():
            if name in NATS_NAMES:
                found.add("nats")
            for fixturedef in defs:
                func = inspect.unwrap(fixturedef.func)
                found |= _file_categories(func.__code__.co_filename, func.__name__)
    if item.path.is_relative_to(TESTS / "faults"):
        found.add("faults")
    # A category the test names itself counts too (for what no reading can see, such as
    # a nats-server started by a worker subprocess).
    found |= {marker.name for marker in item.iter_markers() if marker.name in CATEGORIES}
    return found or {"unit"}


def mark(items: list[pytest.Item]) -> None:
    for item in items:
        for category in sorted(categories_of(item)):
            item.add_marker(category)


#: Markers a `-m` expression may use for `unselectable` to decide anything.
_DECIDABLE = frozenset({*CATEGORIES, "slow"})


def unselectable(path: Path, markexpr: str) -> bool:
    """Whether no test of the module at ``path`` can match ``markexpr`` (``-m``), so that
    collecting it, and importing Synapse for it, can be skipped.

    Every test of a module that imports Synapse is ``oracle``, and every test under
    tests/faults/ is ``faults``; the expression must be false whatever else the tests
    carry. Any doubt (another marker in the expression, a pytest without the expression
    parser) means the module is collected as usual.
    """
    if not markexpr or path.suffix != ".py" or not path.is_relative_to(TESTS):
        return False
    known = {"oracle"} & scan_module(path).at_import
    if path.is_relative_to(TESTS / "faults"):
        known.add("faults")
    if not known:
        return False
    names = set(re.findall(r"[A-Za-z_]\w*", markexpr)) - {"and", "or", "not"}
    if not names <= _DECIDABLE:
        return False
    try:
        from _pytest.mark.expression import Expression

        expression = Expression.compile(markexpr)
    except Exception:  # a pytest that parses differently decides nothing here
        return False
    free = sorted(names - known - {"unit"})
    for chosen in itertools.product((False, True), repeat=len(free)):
        carried = known | {name for name, on in zip(free, chosen, strict=True) if on}
        if expression.evaluate(_carries(carried)):
            return False
    return True


def _carries(markers: set[str]) -> Callable[..., bool]:
    """An expression matcher: whether a test carries a marker (arguments ignored)."""

    def matcher(name: str, /, **_: object) -> bool:
        return name in markers

    return matcher
