"""Answering questions about rooms: the request/reply query service and the graph tool.

The service reads through `worker.storage.reader`, never through the write path, so a
slow or heavy query cannot hold up input processing.
"""

from worker.query.schema import SERVICE_NAME
from worker.query.service import Queries, QueryService

__all__ = ["SERVICE_NAME", "Queries", "QueryService"]
