"""The events one resolution reads, looked up once each.

Every step of the algorithms asks the same questions about the same few events many
times over (what are this event's auth events, is it rejected, which power levels event
does it cite), so one `EventSource` per resolution memoizes the caller's lookup and the
derived answers. It is deliberately short-lived: it holds no state between resolutions,
so callers never have to think about invalidation. The one exception is the caller's
own: `auth_outcomes`, which a caller whose event IDs fix their events may keep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass

from worker.matrix.auth import auth_types_for_event, user_power_level
from worker.matrix.auth.power_levels import Level
from worker.matrix.events import CREATE, JOIN_RULES, MEMBER, POWER_LEVELS, Event, StateKey
from worker.matrix.room_versions import RoomVersion

CREATE_KEY: StateKey = (CREATE, "")
POWER_LEVELS_KEY: StateKey = (POWER_LEVELS, "")

#: Looks a stored event up by ID; None when the event is unknown.
GetEvent = Callable[[str], Event | None]
#: True for an event that was rejected (failed authorization when it was received).
IsRejected = Callable[[str], bool]
#: Outcomes of the auth rules kept by a caller across resolutions: (event ID, the
#: (state key, event ID) pairs of the auth state it was checked against) → allowed.
#: The rules read nothing else, so with event IDs that fix their events (hashed IDs, a
#: store that never changes an event) an outcome holds for good.
AuthOutcomes = MutableMapping[tuple[str, frozenset[tuple[StateKey, str]]], bool]
#: A caller's own `EventSource.usable_keyed` (kept across resolutions, say): the event's
#: state key and the event when it is known, a state event and not rejected, else None.
UsableKeyed = Callable[[str], "tuple[StateKey, Event] | None"]
#: Power levels parents kept by a caller across resolutions (`power_levels_parent`),
#: on the same terms as `AuthOutcomes`: only answers read from known events are kept.
PowerLevelsParents = MutableMapping[str, str | None]
#: Users' power levels kept by a caller across resolutions (`EventSource.sender_power`):
#: (user ID, create event ID, power levels event ID or None) → the level those two
#: events give the user, on the same terms as `AuthOutcomes`.
SenderLevels = MutableMapping[tuple[str, str, str | None], Level]


@dataclass(frozen=True, slots=True)
class KeptAnswers:
    """Answers a caller keeps across resolutions, in memos of its own (bounded as it
    likes). A forked room resolves the same events over and over, and each answer
    here is read from one event (and the events it cites), so it holds for good
    where an event ID fixes its event: hashed IDs (room versions 3 on), in a store
    that never changes an event. Legacy IDs are chosen by their servers: no memos."""

    #: The auth rules' outcomes (`AuthOutcomes`).
    auth_outcomes: AuthOutcomes
    #: `EventSource.power_levels_parent`, only answers read from known events.
    pl_parents: PowerLevelsParents
    #: Event ID → the state keys its auth events selection names (`EventSource.auth_types`).
    auth_types: MutableMapping[str, tuple[StateKey, ...]]
    #: Event ID → whether the event is a power event (`EventSource.is_power`).
    power_events: MutableMapping[str, bool]
    #: The power ordering's sender levels (`SenderLevels`): a forked room orders the
    #: same power events, sent by the same few users, in every resolution.
    sender_levels: SenderLevels

    def clear(self) -> None:
        self.auth_outcomes.clear()
        self.pl_parents.clear()
        self.auth_types.clear()
        self.power_events.clear()
        self.sender_levels.clear()


_REMOVING_MEMBERSHIPS = ("leave", "ban")


def is_power_event(event: Event) -> bool:
    """An event that may take away someone's ability to act: they are resolved first."""
    event_type = event.type
    if event_type in (POWER_LEVELS, JOIN_RULES, CREATE):
        return event.state_key == ""
    if event_type == MEMBER:
        return event.membership in _REMOVING_MEMBERSHIPS and event.sender != event.state_key
    return False


def _never_rejected(_event_id: str) -> bool:
    return False


class EventSource:
    """Memoized access to the events of one room during one resolution."""

    __slots__ = (
        "_auth_types",
        "_create",
        "_create_candidates",
        "_events",
        "_get",
        "_is_rejected",
        "_pl_parent",
        "_power_events",
        "_rejected",
        "_usable",
        "auth_outcomes",
        "pl_parents",
        "room_version",
        "sender_levels",
        "usable_of",
    )

    def __init__(
        self,
        room_version: RoomVersion,
        get_event: GetEvent,
        is_rejected: IsRejected | None = None,
        create_candidates: Iterable[str] = (),
        kept: KeptAnswers | None = None,
        usable_of: UsableKeyed | None = None,
    ) -> None:
        self.room_version = room_version
        self.usable_of = usable_of
        self.auth_outcomes = kept.auth_outcomes if kept is not None else None
        self.pl_parents = kept.pl_parents if kept is not None else None
        self.sender_levels = kept.sender_levels if kept is not None else None
        # Without a caller's memos, these last for this resolution only.
        self._auth_types = kept.auth_types if kept is not None else {}
        self._power_events = kept.power_events if kept is not None else {}
        self._get = get_event
        self._is_rejected = is_rejected if is_rejected is not None else _never_rejected
        self._events: dict[str, Event | None] = {}
        self._rejected: dict[str, bool] = {}
        self._pl_parent: dict[str, str | None] = {}
        self._usable: dict[str, tuple[StateKey, Event] | None] = {}
        self._create_candidates = tuple(create_candidates)
        self._create: Event | bool | None = False  # False: not looked for yet

    def event(self, event_id: str) -> Event | None:
        try:
            return self._events[event_id]
        except KeyError:
            event = self._events[event_id] = self._get(event_id)
            return event

    def auth_ids(self, event_id: str) -> tuple[str, ...]:
        """The event's `auth_events`; an unknown event ends the walk (it cites nothing)."""
        event = self.event(event_id)
        return event.auth_event_ids if event is not None else ()

    def cited_by(self, event_ids: Iterable[str]) -> set[str]:
        """The auth events of all these events, for walks over many events read once.

        Nothing is remembered, and the loop stays in this frame: a walk over a large
        room's membership calls this once per level, not once per event.
        """
        cache = self._events
        get = self._get
        cited: set[str] = set()
        for event_id in event_ids:
            event = cache.get(event_id) or get(event_id)
            if event is not None:
                cited.update(event.auth_event_ids)
        return cited

    def rejected(self, event_id: str) -> bool:
        try:
            return self._rejected[event_id]
        except KeyError:
            flag = self._rejected[event_id] = self._is_rejected(event_id)
            return flag

    def usable(self, event_id: str) -> Event | None:
        """The event if it is known, a state event and not rejected: fit to authorize others."""
        keyed = self.usable_keyed(event_id)
        return keyed[1] if keyed is not None else None

    def usable_keyed(self, event_id: str) -> tuple[StateKey, Event] | None:
        """`usable`, with the event's state key, remembered: the auth checks ask this of
        the same few power levels, join rules and member events thousands of times."""
        try:
            return self._usable[event_id]
        except KeyError:
            pass
        if self.usable_of is not None:
            keyed = self._usable[event_id] = self.usable_of(event_id)
            return keyed
        event = self.event(event_id)
        keyed = None
        if event is not None and event.is_state and not self.rejected(event_id):
            keyed = (event.key, event)
        self._usable[event_id] = keyed
        return keyed

    def auth_types(self, event_id: str, event: Event) -> tuple[StateKey, ...]:
        """The state keys the event's auth events selection names (`auth_types_for_event`),
        remembered: the iterative auth checks ask it of the same events every resolution."""
        try:
            return self._auth_types[event_id]
        except KeyError:
            pass
        types = self._auth_types[event_id] = tuple(
            auth_types_for_event(
                self.room_version, event.type, event.state_key, event.sender, event.content
            )
        )
        return types

    def is_power(self, event_id: str, event: Event) -> bool:
        """`is_power_event` of the event, remembered."""
        try:
            return self._power_events[event_id]
        except KeyError:
            pass
        power = self._power_events[event_id] = is_power_event(event)
        return power

    def power_levels_parent(self, event_id: str) -> str | None:
        """The `m.room.power_levels` event among this event's auth events (the first one)."""
        try:
            return self._pl_parent[event_id]
        except KeyError:
            pass
        kept = self.pl_parents
        if kept is not None and event_id in kept:
            parent = self._pl_parent[event_id] = kept[event_id]
            return parent
        parent = None
        # An unknown event may arrive and change the answer: only keep one without.
        known = self.event(event_id) is not None
        for auth_id in self.auth_ids(event_id):
            auth_event = self.event(auth_id)
            if auth_event is None:
                known = False
            elif auth_event.type == POWER_LEVELS and auth_event.state_key == "":
                parent = auth_id
                break
        self._pl_parent[event_id] = parent
        if kept is not None and known:
            kept[event_id] = parent
        return parent

    def room_create(self) -> Event | None:
        """The room's create event, for rules that need it when an event does not cite it.

        v12 events never cite the create event, and a malformed earlier event may not
        either. It is taken from the state maps being resolved (`create_candidates`),
        else, in v12, from the room ID, which is the create event's ID with `!` for `$`.
        """
        if self._create is not False:
            return self._create if isinstance(self._create, Event) else None
        found: Event | None = None
        for candidate in self._create_candidates:
            event = self.usable(candidate)
            if event is not None and event.type == CREATE:
                found = event
                break
        self._create = found
        return found

    def create_for(self, event: Event) -> Event | None:
        """The create event that `event`'s authorization should see."""
        for auth_id in event.auth_event_ids:
            auth_event = self.usable(auth_id)
            if auth_event is not None and auth_event.type == CREATE and auth_event.state_key == "":
                return auth_event
        create = self.room_create()
        if create is not None or not self.room_version.room_id_from_create:
            return create
        room_id = event.room_id
        if not room_id.startswith("!"):
            return None
        derived = self.usable("$" + room_id[1:])
        return derived if derived is not None and derived.type == CREATE else None

    def sender_power(self, event_id: str) -> Level:
        """The sender's power level as the event's own auth events give it.

        This is the first tie-break of the reverse topological power ordering. The
        create event cites nothing, so it has no power levels to look at: 0 (as Synapse).
        """
        event = self.event(event_id)
        if event is None or (event.type == CREATE and event.state_key == ""):
            return 0
        create = self.create_for(event)
        if create is None:
            return 0
        pl_id = self.power_levels_parent(event_id)
        pl_event = self.event(pl_id) if pl_id is not None else None
        kept = self.sender_levels
        if kept is None:
            return _level_in(create, pl_event, event.sender)
        # The level is read from these two events' contents alone.
        memo_key = (event.sender, create.event_id, pl_event.event_id if pl_event else None)
        level = kept.get(memo_key)
        if level is None:
            level = kept[memo_key] = _level_in(create, pl_event, event.sender)
        return level


def _level_in(create: Event, power_levels: Event | None, user_id: str) -> Level:
    """The user's power level in a state of this create and power levels event."""
    state: dict[StateKey, Event] = {CREATE_KEY: create}
    if power_levels is not None:
        state[POWER_LEVELS_KEY] = power_levels
    return user_power_level(state, user_id)


def first_create_ids(state_sets: Iterable[Mapping[StateKey, str]]) -> list[str]:
    """The create event IDs the state maps hold, most common first, without repeats."""
    seen: dict[str, int] = {}
    for state in state_sets:
        create_id = state.get(CREATE_KEY)
        if create_id is not None:
            seen[create_id] = seen.get(create_id, 0) + 1
    return sorted(seen, key=lambda event_id: -seen[event_id])
