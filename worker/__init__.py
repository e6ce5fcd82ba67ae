"""A Matrix roomserver as a NATS JetStream stream worker."""

__version__ = "0.1.0"
