"""Nothing from input is ever interpolated into SQL: every value reaches SQLite as a
bound parameter. This scans the worker's source so that a new f-string query that
interpolates anything but the vetted constants fails the suite."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

WORKER = Path(__file__).resolve().parents[2] / "worker"
SQL_START = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|REPLACE|PRAGMA|CREATE|WITH|DROP)\b", re.I)
#: Names an SQL f-string may interpolate: column lists and the schema version, both
#: constants. (ID lists travel as one JSON parameter, `json_each(?)`.)
VETTED = {"_EVENT_COLUMNS", "SCHEMA_VERSION"}


def sql_fstrings(path: Path) -> list[tuple[int, ast.JoinedStr]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.JoinedStr) and node.values:
            first = node.values[0]
            if isinstance(first, ast.Constant) and SQL_START.match(str(first.value)):
                found.append((node.lineno, node))
    return found


def sources() -> list[Path]:
    return sorted(WORKER.rglob("*.py"))


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(WORKER)))
def test_sql_fstrings_interpolate_only_vetted_constants(path: Path) -> None:
    for line, node in sql_fstrings(path):
        for part in node.values:
            if isinstance(part, ast.FormattedValue):
                assert isinstance(part.value, ast.Name) and part.value.id in VETTED, (
                    f"{path}:{line} interpolates {ast.unparse(part.value)} into SQL"
                )


def test_the_vetted_names_are_what_they_claim() -> None:
    from worker.storage import database, schema

    assert re.fullmatch(r"[a-z_, ]+", database._EVENT_COLUMNS)
    assert isinstance(schema.SCHEMA_VERSION, int)


def test_the_scan_finds_the_known_queries() -> None:
    """A scan that finds nothing would pass for the wrong reason."""
    assert sum(len(sql_fstrings(path)) for path in (WORKER / "storage").glob("*.py")) >= 4
