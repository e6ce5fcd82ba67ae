"""The undisturbed reference run every fault test is compared with, computed once per
session: the same feed processed by the same worker subprocess against its own
nats-server, with nothing going wrong. The harness itself is in tests/harness/sites.py.
"""

from __future__ import annotations

import pytest
import pytest_asyncio

from tests.harness.feed import Feed, build_feed
from tests.harness.sites import RunResult, finish, site
from worker.bus.subjects import Subjects


@pytest.fixture(scope="session")
def feed() -> Feed:
    return build_feed(Subjects())


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def reference(feed: Feed, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    async with site(tmp_path_factory.mktemp("reference")) as ref:
        await ref.publish(feed)
        lines = await finish(ref)
        result = await ref.result()
        result.log_lines = lines
        return result
