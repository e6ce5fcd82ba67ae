"""SQLite storage: NIDs, events, state blocks and snapshots, rooms and the outbox.

Nothing outside this package writes or runs SQL. The write path uses one synchronous
connection owned by a single thread (see `database.py` for why); the query service
reads through `reader.py` (one read-only aiosqlite connection), and the operator tools
(`roomserver stats`, `graph`, `verify`) through `inspection.py` (read-only sqlite3).
Both the writer and the reader load snapshots with `snapshots.py`.
"""
