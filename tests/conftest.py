"""Fixtures: a real nats-server per session (or per test), real FUSE mounts.

Everything started here is stopped by PID and unmounted in teardown, also
when the test fails.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hvfs.server import EmbeddedServer

from .helpers import Mount, RawNats

_counter = itertools.count()

#: the seed's whole layout (docs/entities.md), mounted by ``fleet`` and ``fleet2``
FLEET_CONFIG = Path(__file__).resolve().parent.parent / "examples" / "fleet.yml"


def _need_fuse() -> None:
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("/dev/fuse is not available")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    srv = EmbeddedServer(tmp_path_factory.mktemp("nats"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A server this test may stop and restart."""
    srv = EmbeddedServer(tmp_path / "nats")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def raw(server: EmbeddedServer) -> Iterator[RawNats]:
    client = RawNats(server.url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def mnt(server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """One mount shared by the tests of a session (raw view)."""
    _need_fuse()
    m = Mount(tmp_path_factory.mktemp("mnt") / "m", server.url, "--writer", "mnt-a").start()
    yield m
    m.stop()


@pytest.fixture(scope="session")
def mnt2(server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """A second mount of the same server (another host, in effect)."""
    _need_fuse()
    m = Mount(tmp_path_factory.mktemp("mnt2") / "m", server.url, "--writer", "mnt-b").start()
    yield m
    m.stop()


@pytest.fixture
def bucket(raw: RawNats) -> str:
    """A fresh KV bucket for one test."""
    name = f"t{os.getpid()}_{next(_counter)}"
    raw.create_bucket(name)
    return name


@pytest.fixture(scope="session")
def fleet(server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """examples/fleet.yml mounted as agent ag-7 (buckets fleet_*, streams fleet_threads, fleet_work)."""
    _need_fuse()
    m = Mount(tmp_path_factory.mktemp("fleet") / "m", server.url,
              "--config", str(FLEET_CONFIG), "--writer", "ag-7")
    try:
        yield m.start()
    finally:
        m.stop()


@pytest.fixture(scope="session")
def fleet2(server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """A second mount of examples/fleet.yml, as agent ag-9 (another host, in effect)."""
    _need_fuse()
    m = Mount(tmp_path_factory.mktemp("fleet2") / "m", server.url,
              "--config", str(FLEET_CONFIG), "--writer", "ag-9")
    try:
        yield m.start()
    finally:
        m.stop()
