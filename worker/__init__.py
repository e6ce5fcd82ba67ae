"""A Matrix roomserver as a NATS JetStream stream worker."""

import sys

__version__ = "0.1.0"

# structlog's package imports its Twisted integration whenever Twisted is installed
# (`from structlog import twisted`, an ImportError only when Twisted is missing), and
# that pulls in Twisted, zope.interface and their imports: ~3 MiB of every worker
# process on a host where something else installed Twisted (the test oracle, Synapse,
# does). The worker never logs through Twisted; a None entry in sys.modules makes that
# one import fail as if Twisted were absent, which structlog handles. Set here, before
# any worker module imports structlog; a process that imported structlog first keeps
# what it has.
sys.modules.setdefault("structlog.twisted", None)  # type: ignore[arg-type]
