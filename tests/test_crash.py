"""A mount whose daemon was killed (kill -9) answers ENOTCONN; ``hvfs mount`` on the same
path detaches the dead mount by itself and mounts again (docs/deployment.md)."""

from __future__ import annotations

import errno
import os
import signal

import pytest

from .helpers import Mount, is_mounted, wait_for


def test_mount_again_over_a_dead_mount(server, tmp_path):
    mp = tmp_path / "m"
    first = Mount(mp, server.url, "--writer", "crash-a").start()
    try:
        assert first.proc is not None
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
        with pytest.raises(OSError) as ei:
            os.listdir(mp)  # a request to the daemon: a stat may come from the kernel's cache
        assert ei.value.errno == errno.ENOTCONN
        assert is_mounted(mp)
        second = Mount(mp, server.url, "--writer", "crash-b").start()
        try:
            wait_for(lambda: '"writer": "crash-b"' in (mp / ".hvfs" / "status").read_text(),
                     what="the new mount to answer")
            assert "detached a dead hvfs mount" in second.log_text()
        finally:
            second.stop()
    finally:
        first.proc = None
        if is_mounted(mp):
            os.system(f"fusermount3 -u -z {mp}")
