"""SQLite storage: NIDs, events, state blocks and snapshots, rooms and the outbox.

Nothing outside this package writes SQL. The write path uses one synchronous
connection owned by a single thread (see `database.py` for why); read-only
callers such as the query service use `reader.py`.
"""
