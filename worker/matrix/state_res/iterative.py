"""The iterative auth checks of state resolution v2 and v2.1.

The partial state is kept as a base map plus a dict of changes, so that v2.0 can start
from a 10,000-entry unconflicted state without copying it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from worker.matrix.auth import AuthError, check_auth
from worker.matrix.events import Event, StateKey, StateMap
from worker.matrix.state_res.source import CREATE_KEY, EventSource


def _allowed(event: Event, auth_state: Mapping[StateKey, Event]) -> bool:
    try:
        check_auth(event, auth_state)
    except AuthError:
        return False
    return True


class PartialState:
    """A state map built as changes over a base map that is never written to."""

    __slots__ = ("base", "changes")

    def __init__(self, base: Mapping[StateKey, str]) -> None:
        self.base = base
        self.changes: StateMap = {}

    def get(self, key: StateKey) -> str | None:
        value = self.changes.get(key)
        return value if value is not None else self.base.get(key)


def iterative_auth_checks(
    event_ids: Iterable[str], state: PartialState, source: EventSource
) -> None:
    """Apply each event, in order, to `state` if the authorization rules allow it there.

    An event is checked against its own (known, not rejected) auth events, overridden by
    whatever `state` holds for the keys the auth events selection names, plus the room's
    create event, which v12 events never cite. A rejected event is not admitted even if
    it would pass now (as Synapse: a rejected event stays out of every state).
    """
    usable = source.usable_keyed
    auth_types = source.auth_types
    changes = state.changes
    base = state.base
    outcomes = source.auth_outcomes
    for event_id in event_ids:
        keyed = usable(event_id)  # rejected events are never admitted
        if keyed is None:
            continue
        key, event = keyed
        auth_state: dict[StateKey, Event] = {}
        for auth_id in event.auth_event_ids:
            auth_keyed = usable(auth_id)
            if auth_keyed is not None:
                auth_state[auth_keyed[0]] = auth_keyed[1]
        for auth_key in auth_types(event_id, event):
            current_id = changes.get(auth_key) or base.get(auth_key)
            if current_id is not None:
                current = usable(current_id)
                if current is not None:
                    auth_state[auth_key] = current[1]
        if CREATE_KEY not in auth_state:
            create = source.create_for(event)
            if create is not None:
                auth_state[CREATE_KEY] = create
        if outcomes is None:
            allowed = _allowed(event, auth_state)
        else:
            # A forked room checks the same events against the same auth states in
            # resolution after resolution.
            checked = (event_id, frozenset([(k, e.event_id) for k, e in auth_state.items()]))
            known = outcomes.get(checked)
            if known is None:
                known = outcomes[checked] = _allowed(event, auth_state)
            allowed = known
        if allowed:
            changes[key] = event_id
