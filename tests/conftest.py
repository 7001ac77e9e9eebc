"""Shared fixtures: real proxy and server processes on free loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from skillscale import SkillScaleClient
from tests.helpers import (
    BUNDLED_SKILLS,
    FIXTURE_SKILLS,
    ReferenceClient,
    RoleProcess,
    close_all_roles,
    start_proxy,
    start_server,
)


@pytest.fixture(autouse=True, scope="module")
def _no_stray_roles() -> Iterator[None]:
    """Whatever a test module started and did not stop is stopped here."""
    yield
    close_all_roles()


@pytest.fixture(scope="module")
def proxy() -> Iterator[RoleProcess]:
    role = start_proxy()
    yield role
    role.close()


@pytest.fixture(scope="module")
def bundled_servers(proxy: RoleProcess) -> Iterator[list[RoleProcess]]:
    servers = [
        start_server(proxy, BUNDLED_SKILLS / "data-processing"),
        start_server(proxy, BUNDLED_SKILLS / "code-analysis"),
    ]
    yield servers
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def testing_server(proxy: RoleProcess) -> Iterator[RoleProcess]:
    server = start_server(proxy, FIXTURE_SKILLS / "testing", "TOPIC_TESTING", timeout=5, workers=4)
    yield server
    server.close()


@pytest.fixture
async def client(proxy: RoleProcess) -> AsyncIterator[SkillScaleClient]:
    async with SkillScaleClient(proxy.ready["xsub"], proxy.ready["xpub"], timeout=20) as c:
        yield c


@pytest.fixture
def ref_client(proxy: RoleProcess) -> Iterator[ReferenceClient]:
    c = ReferenceClient(proxy.ready["xsub"], proxy.ready["xpub"])
    yield c
    c.close()
