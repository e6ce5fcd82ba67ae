"""Adapters to other Matrix implementations, used by tests as oracles (never by worker/)."""
