"""Shared fixtures: real proxy and server processes on free loopback ports."""

from __future__ import annotations

import asyncio
import os
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
from tests.test_fabric_cases import WAIT, Fabric


@pytest.fixture(params=["memory", "zmq"])
async def fabric(request: pytest.FixtureRequest) -> AsyncIterator[Fabric]:
    """The in-process fabric (:class:`tests.test_fabric_cases.Fabric`): each test
    that takes it runs once on the memory bus and once on real ZeroMQ."""
    fab = Fabric(request.param)
    try:
        yield fab
    finally:
        await asyncio.wait_for(fab.close(), WAIT)


@pytest.fixture(autouse=True, scope="session")
def _distiller_off_the_real_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """`skillscale up` starts a distiller: in tests it reads and writes a temporary home."""
    base = tmp_path_factory.mktemp("distill-home")
    saved = {k: os.environ.get(k) for k in ("SKILLSCALE_DISTILL_HOME", "SKILLSCALE_DISTILL_DIR")}
    os.environ["SKILLSCALE_DISTILL_HOME"] = str(base / "home")
    os.environ["SKILLSCALE_DISTILL_DIR"] = str(base / "distilled")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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
