"""State resolution v1 (room version 1), as the spec's `content/rooms/v1.md` gives it.

Known to reset state (the spec says so itself); kept only because version-1 rooms exist.
Where the spec is loose the choices are Synapse's, which is what v1 rooms converged on:

- Conflicts are resolved per key: first the power levels, then each join rules key, then
  each member key, then every other key. Each step checks against the unconflicted
  state plus what the *earlier* steps resolved (members do not see each other).
- For power levels, join rules and members the candidates go in ascending depth, then
  descending SHA-1 of the event ID; the first is taken, and each next one replaces it
  while it passes the auth rules against the previous one, stopping at the first that
  fails.
- Other keys take the first candidate, by descending depth then ascending SHA-1, that
  passes; if none does, the last in that order.
- Unknown and rejected events are left out of the candidates; a key left with one
  candidate is unconflicted, with none it is dropped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from worker.matrix.auth import AuthError, auth_types_for_event, check_auth
from worker.matrix.events import JOIN_RULES, MEMBER, Event, StateKey, StateMap
from worker.matrix.state_res.source import CREATE_KEY, POWER_LEVELS_KEY, EventSource
from worker.matrix.state_res.split import split_conflicted_v1


def resolve_v1_conflicts(
    unconflicted: Mapping[StateKey, str],
    differing: Sequence[Mapping[StateKey, str]],
    source: EventSource,
) -> StateMap:
    """The resolved entries outside `unconflicted`, the keys all maps agree on.

    `differing[i]` holds map i's entries for every other key. v1 counts a key that
    only some maps hold, with one event, as unconflicted too; such keys are among the
    differing ones here and come back in the result, as do the resolved conflicts.
    The caller adds `unconflicted` itself; it is only looked up by key here.
    """
    extra, conflicted_ids = split_conflicted_v1(differing)
    conflicted: dict[StateKey, list[Event]] = {}
    for key, ids in conflicted_ids.items():
        events = [event for event_id in ids if (event := source.usable(event_id)) is not None]
        if len(events) > 1:
            conflicted[key] = events
        elif events:
            extra[key] = events[0].event_id

    resolver = _Resolver(unconflicted, extra, source)
    if POWER_LEVELS_KEY in conflicted:
        resolver.resolve_auth_keys(conflicted, [POWER_LEVELS_KEY])
    resolver.resolve_auth_keys(conflicted, [k for k in conflicted if k[0] == JOIN_RULES])
    resolver.resolve_auth_keys(conflicted, [k for k in conflicted if k[0] == MEMBER])
    seen = resolver.snapshot()
    for key, events in conflicted.items():
        if key not in resolver.resolved:
            resolver.resolved[key] = _first_allowed(events, seen, resolver)

    result = extra
    for key, event in resolver.resolved.items():
        result[key] = event.event_id
    return result


class _Resolver:
    __slots__ = ("extra", "resolved", "source", "unconflicted")

    def __init__(
        self,
        unconflicted: Mapping[StateKey, str],
        extra: Mapping[StateKey, str],
        source: EventSource,
    ) -> None:
        #: The keys all maps agree on, and those only some maps hold, with one event.
        self.unconflicted = unconflicted
        self.extra = extra
        self.source = source
        self.resolved: dict[StateKey, Event] = {}

    def snapshot(self) -> dict[StateKey, Event]:
        return dict(self.resolved)

    def auth_state(
        self, event: Event, seen: Mapping[StateKey, Event], previous: Event | None
    ) -> dict[StateKey, Event]:
        """The state `event` is checked against: R as of this step, with `previous` in it."""
        source = self.source
        state: dict[StateKey, Event] = {}
        for key in auth_types_for_event(
            source.room_version, event.type, event.state_key, event.sender, event.content
        ):
            found = seen.get(key)
            if found is None:
                event_id = self.extra.get(key) or self.unconflicted.get(key)
                found = source.usable(event_id) if event_id is not None else None
            if found is not None:
                state[key] = found
        if previous is not None:
            state[previous.key] = previous
        if CREATE_KEY not in state:
            create = source.create_for(event)
            if create is not None:
                state[CREATE_KEY] = create
        return state

    def allowed(self, event: Event, seen: Mapping[StateKey, Event], previous: Event | None) -> bool:
        try:
            check_auth(event, self.auth_state(event, seen, previous))
        except AuthError:
            return False
        return True

    def resolve_auth_keys(
        self, conflicted: Mapping[StateKey, list[Event]], keys: list[StateKey]
    ) -> None:
        seen = self.snapshot()
        for key in keys:
            # Ascending depth, then descending SHA-1: the reverse of `_newest_first`.
            candidates = sorted(conflicted[key], key=_newest_first, reverse=True)
            chosen = candidates[0]
            for event in candidates[1:]:
                if not self.allowed(event, seen, chosen):
                    break
                chosen = event
            self.resolved[key] = chosen


def _first_allowed(
    events: list[Event], seen: Mapping[StateKey, Event], resolver: _Resolver
) -> Event:
    candidates = sorted(events, key=_newest_first)
    for event in candidates:
        if resolver.allowed(event, seen, None):
            return event
    return candidates[-1]


def _sha1(event_id: str) -> str:
    return hashlib.sha1(event_id.encode("utf-8")).hexdigest()


def _newest_first(event: Event) -> tuple[int, str]:
    return (-event.depth, _sha1(event.event_id))
