"""The worker's NATS side: subjects, embedded server, connection, streams, consumer, publisher."""

from worker.bus.connection import connect
from worker.bus.consumer import PullConsumer, consumer_config
from worker.bus.publisher import MSG_ID_HEADER, Outgoing, Publisher, dead_letter_body
from worker.bus.server import EmbeddedNatsServer, NatsServerError, find_nats_server_binary
from worker.bus.streams import StreamDifference, ensure_streams, stream_configs
from worker.bus.subjects import UNKNOWN_ROOM_TOKEN, Subjects, room_id_from_token, room_token

__all__ = [
    "MSG_ID_HEADER",
    "UNKNOWN_ROOM_TOKEN",
    "EmbeddedNatsServer",
    "NatsServerError",
    "Outgoing",
    "Publisher",
    "PullConsumer",
    "StreamDifference",
    "Subjects",
    "connect",
    "consumer_config",
    "dead_letter_body",
    "ensure_streams",
    "find_nats_server_binary",
    "room_id_from_token",
    "room_token",
    "stream_configs",
]
