"""Fixtures of the long tests: a private server with one or two mounts, a fresh tmpfs.

The long tests run only with HVFS_LONG=1 (``bash scripts/test.sh --long``);
in the normal run every item below tests/long is skipped, also one whose
module forgot ``pytestmark = long_only``.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from .common import LOG_ROOT, LONG, REPORTS, Rig, Tmpfs, long_only, start_rig

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if LONG:
        return
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(long_only)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORTS:
        return
    terminalreporter.section("hvfs long tests: the numbers (mount beside tmpfs)")
    for text in REPORTS:
        terminalreporter.write_line(text)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
        item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    if rep.failed:
        item.stash[_FAILED] = True
    return rep


_FAILED = pytest.StashKey[bool]()


def _stop(r: Rig, request: pytest.FixtureRequest) -> None:
    keep = None
    if request.node.stash.get(_FAILED, False):
        keep = LOG_ROOT / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    r.stop(keep_logs=keep)
    if keep is not None:
        print(f"\nlogs of {request.node.nodeid} kept in {keep}", flush=True)
        REPORTS.append(f"logs of failed {request.node.nodeid}: {keep}\n")


@pytest.fixture
def rig(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    """A private nats-server and one ``hvfs mount`` of it."""
    r = start_rig(tmp_path, mounts=1)
    yield r
    _stop(r, request)


@pytest.fixture
def rig2(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    """A private nats-server and two ``hvfs mount`` s of it (two hosts, in effect)."""
    r = start_rig(tmp_path, mounts=2)
    yield r
    _stop(r, request)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A fresh tmpfs (``mount -t tmpfs``), unmounted afterwards."""
    t = Tmpfs(tmp_path / "tmpfs").start()
    yield t.path
    t.stop()
