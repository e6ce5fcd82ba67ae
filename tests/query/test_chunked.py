"""Replies too big for one NATS message, end to end: a real nats-server whose
max_payload is lowered to 64 KiB (so a room of 2,000 members is already "too large"),
the real worker, `worker.client` and the `roomserver state` command.

The whole state must come back complete and equal to the state read a second way
(the Inspector's own merge of the stored blocks, and the builder's state, which knows
nothing of storage); a request that does not accept chunks still gets `too_large`;
and a lost or late chunk gives a clear error, never part of a state. For the faults,
a test responder stands in for a misbehaving worker on the same real server: it cuts
a real reply with the worker's own splitter and then drops, delays or damages a chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgpack
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from tests.harness.e2e import cli, input_for, publish_inputs, running_worker
from tests.harness.procs import NatsProcess
from tests.query.scenario import ALICE, VERSION, wait_processed
from worker.bus.connection import connect
from worker.bus.streams import ensure_streams
from worker.cli import EXIT_OK, EXIT_UNREACHABLE
from worker.client import RoomserverClient, RoomserverError
from worker.config import Config
from worker.matrix.builder import RoomBuilder
from worker.query.chunks import (
    ACCEPT_CHUNKS_HEADER,
    CHUNK_HEADER,
    REPLY_CRC_HEADER,
    Reassembly,
    accepts_chunks,
    chunk_place,
    chunk_size,
    split,
)
from worker.query.schema import State, StateEntry, pack_reply
from worker.storage.inspection import Inspector

MAX_PAYLOAD = 64 * 1024
MEMBERS = 2000


@pytest_asyncio.fixture
async def small_nats(tmp_path: Path) -> AsyncIterator[NatsProcess]:
    """A nats-server of its own whose messages are at most 64 KiB."""
    conf = tmp_path / "small.conf"
    conf.write_text(f"max_payload: {MAX_PAYLOAD}\n")
    server = NatsProcess(tmp_path / "small-nats", extra_args=["-c", str(conf)])
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def small_config(config: Config, small_nats: NatsProcess) -> Config:
    return dataclasses.replace(
        config, nats=dataclasses.replace(config.nats, servers=(small_nats.url,))
    )


@pytest_asyncio.fixture
async def small_nc(small_config: Config) -> AsyncIterator[NATS]:
    connection = await connect(small_config.nats)
    try:
        assert connection.max_payload == MAX_PAYLOAD
        yield connection
    finally:
        await connection.close()


def big_room() -> tuple[RoomBuilder, list[str]]:
    """A room whose state has MEMBERS + 4 entries: about 170 kB encoded."""
    builder = RoomBuilder(VERSION, ALICE)
    events = [*builder.bootstrap()]
    events += [builder.join(f"@user{i}:example.org") for i in range(MEMBERS)]
    return builder, [e.event_id for e in events]


async def test_whole_state_over_max_payload_comes_in_chunks(
    small_config: Config, small_nc: NATS, tmp_path: Path
) -> None:
    builder, ids = big_room()
    js = small_nc.jetstream()
    await ensure_streams(js, small_config)
    async with running_worker(small_config) as worker:
        inputs = [input_for(builder.event(i).pdu) for i in ids]
        await publish_inputs(js, small_config, inputs, room_version=VERSION)
        await wait_processed(worker, len(inputs))
        room = builder.room_id
        expected = builder.state_after(ids[-1])
        assert len(expected) == MEMBERS + 4  # create, power levels, join rules, Alice

        # Without the header (an older client, `nats req`): too_large, as before.
        subject = worker.subjects.query("state")
        old = await small_nc.request(subject, msgpack.packb({"room_id": room}), timeout=10)
        refused = msgpack.unpackb(old.data)
        assert refused["error"] == "too_large", refused

        client = RoomserverClient(small_nc, small_config, timeout=10)
        state = await client.state(room)
        # Really more than one message: the reply is several times max_payload.
        encoded = pack_reply(state.to_wire())
        assert len(encoded) > 2 * MAX_PAYLOAD
        assert len(state.entries) == len(expected)
        assert state.as_map() == expected
        assert all(isinstance(e, StateEntry) for e in state.entries)
        # The second way: the Inspector merges the stored blocks itself, in SQL rows.
        with Inspector.open(Path(small_config.storage.path)) as inspector:
            stored = inspector.rows.contents().rooms[room].current_state
        assert state.as_map() == stored

        # The same for the state at an event, and for `latest` with the state.
        at = await client.state(room, event_id=ids[-1], at="before")
        assert at.as_map() == builder.state_after(ids[-2])
        latest = await client.latest(room, include_state=True)
        assert latest.state is not None and set(latest.state) == set(state.entries)

        # The CLI prints every entry (its table, and its JSON).
        text = await cli(small_config, tmp_path, "state", room)
        assert text.code == EXIT_OK, text.err
        lines = text.out.splitlines()
        assert lines[0] == f"state of {room} now: {len(expected)} entries"
        rows = {tuple(line.split()) for line in lines[2:]}
        want = {(t, s, e) if s else (t, e) for (t, s), e in expected.items()}
        assert rows == want
        as_json = (await cli(small_config, tmp_path, "state", room, "--json")).json()
        assert {(t, s): e for t, s, e in as_json["state"]} == expected


# -- faults: a responder that loses, delays or damages a chunk -------------------------------

Responder = Callable[[Msg, list[tuple[bytes, dict[str, str]]]], Awaitable[None]]


def reply_chunks() -> tuple[State, list[tuple[bytes, dict[str, str]]]]:
    """A real state reply of 2,000 entries cut as the worker cuts it."""
    entries = [
        StateEntry("m.room.member", f"@user{i}:example.org", f"$event{i:040d}")
        for i in range(MEMBERS)
    ]
    state = State("!room:example.org", None, None, entries)
    return state, list(split(pack_reply(state.to_wire()), chunk_size(MAX_PAYLOAD)))


@contextlib.asynccontextmanager
async def responder(nc: NATS, subject: str, behave: Responder) -> AsyncIterator[None]:
    chunks = reply_chunks()[1]
    assert len(chunks) >= 3

    async def answer(msg: Msg) -> None:
        assert (msg.headers or {}).get(ACCEPT_CHUNKS_HEADER) == "1"
        await behave(msg, chunks)

    sub = await nc.subscribe(subject, cb=answer)
    await nc.flush()
    try:
        yield
    finally:
        await sub.unsubscribe()


async def send(nc: NATS, msg: Msg, part: tuple[bytes, dict[str, str]]) -> None:
    await nc.publish(msg.reply, part[0], headers=part[1])


async def test_lost_chunk_is_an_error_not_a_partial_state(
    small_config: Config, small_nc: NATS, tmp_path: Path
) -> None:
    async def skip_second(msg: Msg, chunks: list[tuple[bytes, dict[str, str]]]) -> None:
        for i, part in enumerate(chunks):
            if i != 1:
                await send(small_nc, msg, part)

    client = RoomserverClient(small_nc, small_config, timeout=5)
    subject = client.subjects.query("state")
    async with responder(small_nc, subject, skip_second):
        with pytest.raises(RoomserverError) as lost:
            await client.state("!room:example.org")
        assert lost.value.code == "incomplete_reply"
        assert "expected chunk 2/" in lost.value.message and "got chunk 3/" in lost.value.message

        result = await cli(small_config, tmp_path, "state", "!room:example.org")
        assert result.code == EXIT_UNREACHABLE
        assert result.out == ""  # nothing of the state is printed
        assert "(incomplete_reply)" in result.err and "expected chunk 2/" in result.err


async def test_late_chunk_times_out_and_is_then_ignored(
    small_config: Config, small_nc: NATS
) -> None:
    gave_up = asyncio.Event()
    late_sent = asyncio.Event()
    calls = 0

    async def hold_last(msg: Msg, chunks: list[tuple[bytes, dict[str, str]]]) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:  # the second request is answered in full
            for part in chunks:
                await send(small_nc, msg, part)
            return
        for part in chunks[:-1]:
            await send(small_nc, msg, part)
        await gave_up.wait()
        await send(small_nc, msg, chunks[-1])  # after the client gave up
        await small_nc.flush()
        late_sent.set()

    client = RoomserverClient(small_nc, small_config, timeout=1.0)
    subject = client.subjects.query("state")
    expected, _ = reply_chunks()
    async with responder(small_nc, subject, hold_last):
        with pytest.raises(RoomserverError) as late:
            await client.state("!room:example.org")
        gave_up.set()
        assert late.value.code == "incomplete_reply"
        count = len(reply_chunks()[1])
        assert f"chunk {count}/{count} of the reply to state did not arrive within 1 s" in (
            late.value.message
        )
        await asyncio.wait_for(late_sent.wait(), 10)
        # The late chunk reached the client's inbox before this reply (same publisher,
        # same order), and is dropped: the next answer is whole and right.
        client.timeout = 5
        again = await client.state("!room:example.org")
        assert again.entries == expected.entries


async def test_damaged_chunk_fails_its_checksum(small_config: Config, small_nc: NATS) -> None:
    async def flip_a_byte(msg: Msg, chunks: list[tuple[bytes, dict[str, str]]]) -> None:
        for i, (data, headers) in enumerate(chunks):
            if i == 1:
                data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
            await send(small_nc, msg, (data, headers))

    client = RoomserverClient(small_nc, small_config, timeout=5)
    async with responder(small_nc, client.subjects.query("state"), flip_a_byte):
        with pytest.raises(RoomserverError) as damaged:
            await client.state("!room:example.org")
    assert damaged.value.code == "bad_reply"
    assert "does not match its size and checksum" in damaged.value.message


def test_split_headers_and_reassembly() -> None:
    body = bytes(range(256)) * 41  # 10,496 bytes
    parts = list(split(body, 4096))
    assert [h[CHUNK_HEADER] for _, h in parts] == ["1/3", "2/3", "3/3"]
    assert [len(d) for d, _ in parts] == [4096, 4096, 2304]
    assert len({h[REPLY_CRC_HEADER] for _, h in parts}) == 1
    whole = Reassembly.first("state", parts[0][1], parts[0][0])
    for data, headers in parts[1:]:
        assert not whole.complete
        whole.add(headers, data)
    assert whole.complete and whole.body() == body
    assert accepts_chunks({ACCEPT_CHUNKS_HEADER: "1"})
    assert not accepts_chunks({ACCEPT_CHUNKS_HEADER: "0"}) and not accepts_chunks(None)
    assert chunk_place({}) is None
    for bad in ("3", "0/2", "3/2", "a/b"):
        with pytest.raises(RoomserverError):
            chunk_place({CHUNK_HEADER: bad})
    # A repeated chunk is a lost one.
    again = Reassembly.first("state", parts[0][1], parts[0][0])
    with pytest.raises(RoomserverError, match="expected chunk 2/3, got chunk 1/3"):
        again.add(parts[0][1], parts[0][0])
