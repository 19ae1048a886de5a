#!/usr/bin/env python
"""Count the FUSE requests one file operation costs.

Two ways, the first that works:

* the kernel's ``fuse:fuse_request_send`` tracepoint, in a private tracefs
  instance (exact, and cheap enough not to change the timing regime; tracefs is
  mounted for the purpose if it is not, and unmounted again),
* ``strace -e read -xx`` on the mount process, decoding the opcode of each
  /dev/fuse read (slows every request down a lot, which changes the counts: see
  below).

Counts depend on timing: with ``attr_timeout=0`` the kernel keeps attributes
valid until the next jiffy (4 ms at HZ=250), so a path walk re-fetches the
attributes (GETATTR) of every directory on the path only when that much time
has passed since the last fetch. A tight loop amortises that; an isolated
operation, or one slowed down by strace, pays it in full.

    .venv/bin/python bench/fuse_ops.py --pid PID --path MNT/kv/BUCKET/KEY [--op read|write|stat|listdir|ls-l]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable

OPCODES = {
    1: "LOOKUP", 2: "FORGET", 3: "GETATTR", 4: "SETATTR", 14: "OPEN", 15: "READ", 16: "WRITE",
    17: "STATFS", 18: "RELEASE", 20: "FSYNC", 21: "SETXATTR", 22: "GETXATTR", 23: "LISTXATTR",
    25: "FLUSH", 26: "INIT", 27: "OPENDIR", 28: "READDIR", 29: "RELEASEDIR", 33: "ACCESS",
    35: "CREATE", 36: "INTERRUPT", 42: "BATCH_FORGET", 44: "READDIRPLUS", 45: "RENAME2", 52: "STATX",
}

# strace -xx prints read(12, "\x38\x00\x00\x00\x03\x00...", 1052672) = 56
_READ_RE = re.compile(r'^(\d+)\s+[\d:.]+\s+read\((\d+), "((?:\\x[0-9a-f]{2})+)', re.M)
# tracefs: ... fuse_request_send: connection 48 req 1234 opcode 3 (FUSE_GETATTR) len 56
_TRACE_RE = re.compile(r"fuse_request_send: connection (\d+) req \d+ opcode (\d+)")
_SEND_RE = re.compile(r"\s(\d+\.\d+): fuse_request_send: connection (\d+) req (\d+) opcode (\d+)")
_END_RE = re.compile(r"\s(\d+\.\d+): fuse_request_end: connection (\d+) req (\d+) len \d+ error (-?\d+)")
TRACEFS = "/sys/kernel/tracing"


def _kernel_dev(st_dev: int) -> int:
    """A userspace dev_t as the kernel's internal one (major << 20 | minor), as tracepoints print it."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


class FuseCounter:
    """Counts FUSE requests of one mount while a function runs."""

    def __init__(self, mountpoint: str, pid: int) -> None:
        self.mountpoint = mountpoint
        self.pid = pid
        self.conn = _kernel_dev(os.stat(mountpoint).st_dev)
        self.mounted_tracefs = False
        self.instance: str | None = None
        self.how = "strace"
        try:
            if not os.path.exists(f"{TRACEFS}/events"):
                r = subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], capture_output=True)
                self.mounted_tracefs = r.returncode == 0
            if os.path.exists(f"{TRACEFS}/events/fuse/fuse_request_send"):
                inst = f"{TRACEFS}/instances/hvfs-bench-{os.getpid()}"
                os.mkdir(inst)
                self.instance = inst
                self._write("buffer_size_kb", "16384")
                self.how = "tracepoint"
        except OSError:
            self.instance = None
        if self.instance is None and self.mounted_tracefs:
            self._umount()

    def _write(self, rel: str, value: str) -> None:
        assert self.instance is not None
        with open(f"{self.instance}/{rel}", "w") as f:
            f.write(value)

    def _umount(self) -> None:
        subprocess.run(["umount", TRACEFS], capture_output=True)
        self.mounted_tracefs = False

    def close(self) -> None:
        if self.instance is not None:
            try:
                self._write("events/fuse/fuse_request_send/enable", "0")
                self._write("events/fuse/fuse_request_end/enable", "0")
                os.rmdir(self.instance)
            except OSError:
                pass
            self.instance = None
        if self.mounted_tracefs:
            self._umount()

    def count(self, fn: Callable[[], object], repeat: int) -> collections.Counter[str]:
        if self.instance is not None:
            return self._count_trace(fn, repeat)
        return self._count_strace(fn, repeat)

    def _count_trace(self, fn: Callable[[], object], repeat: int) -> collections.Counter[str]:
        self._write("trace", "")
        self._write("events/fuse/fuse_request_send/enable", "1")
        try:
            for _ in range(repeat):
                fn()
        finally:
            self._write("events/fuse/fuse_request_send/enable", "0")
        assert self.instance is not None
        counts: collections.Counter[str] = collections.Counter()
        with open(f"{self.instance}/trace") as f:
            for line in f:
                m = _TRACE_RE.search(line)
                if m and int(m.group(1)) == self.conn:
                    counts[OPCODES.get(int(m.group(2)), m.group(2))] += 1
        return counts

    def timings(self, fn: Callable[[], object], repeat: int) -> dict[str, list[float]]:
        """Per opcode, the kernel-side latency (send -> end, us) of every request while fn ran.

        Only with the tracepoint. The latency covers queueing, the daemon waking
        up, the handler and the reply: what the caller waits for, per request.
        """
        if self.instance is None:
            return {}
        self._write("trace", "")
        self._write("events/fuse/fuse_request_send/enable", "1")
        self._write("events/fuse/fuse_request_end/enable", "1")
        try:
            for _ in range(repeat):
                fn()
        finally:
            self._write("events/fuse/fuse_request_send/enable", "0")
            self._write("events/fuse/fuse_request_end/enable", "0")
        sent: dict[int, tuple[float, str]] = {}
        out: dict[str, list[float]] = collections.defaultdict(list)
        with open(f"{self.instance}/trace") as f:
            for line in f:
                m = _SEND_RE.search(line)
                if m and int(m.group(2)) == self.conn:
                    sent[int(m.group(3))] = (float(m.group(1)), OPCODES.get(int(m.group(4)), m.group(4)))
                    continue
                m = _END_RE.search(line)
                if m and int(m.group(2)) == self.conn:
                    s = sent.pop(int(m.group(3)), None)
                    if s is not None:
                        out[s[1]].append((float(m.group(1)) - s[0]) * 1e6)
        return dict(out)

    def _count_strace(self, fn: Callable[[], object], repeat: int) -> collections.Counter[str]:
        out = f"/tmp/fuse_ops.{os.getpid()}.txt"
        st = subprocess.Popen(["strace", "-f", "-tt", "-e", "trace=read", "-xx", "-s", "8", "-p",
                               str(self.pid), "-o", out], stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.0)  # let strace attach to every thread
            for _ in range(repeat):
                fn()
            time.sleep(0.5)
        finally:
            st.send_signal(signal.SIGINT)
            st.wait(10)
        try:
            with open(out) as f:
                text = f.read()
        finally:
            os.unlink(out)
        counts: collections.Counter[str] = collections.Counter()
        for m in _READ_RE.finditer(text):
            raw = bytes(int(h, 16) for h in m.group(3).split("\\x")[1:])
            if len(raw) >= 8:
                length = int.from_bytes(raw[0:4], "little")
                opcode = int.from_bytes(raw[4:8], "little")
                if 40 <= length <= 1 << 21 and opcode in OPCODES:
                    counts[OPCODES[opcode]] += 1
        return counts


def run_op(op: str, path: str, value: bytes) -> None:
    if op == "read":
        fd = os.open(path, os.O_RDONLY)
        os.read(fd, 65536)
        os.close(fd)
    elif op == "write":
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.write(fd, value)
        os.close(fd)
    elif op == "stat":
        os.stat(path)
    elif op == "listdir":
        os.listdir(path)
    elif op == "ls-l":
        subprocess.run(["ls", "-l", path], stdout=subprocess.DEVNULL, check=False)
    else:
        raise SystemExit(f"unknown op {op}")


def _mountpoint_of(path: str) -> str:
    p = os.path.realpath(path)
    while not os.path.ismount(p):
        p = os.path.dirname(p)
    return p


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pid", type=int, required=True, help="PID of the hvfs mount process")
    p.add_argument("--path", required=True)
    p.add_argument("--op", default="read", choices=["read", "write", "stat", "listdir", "ls-l"])
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--sleep", type=float, default=0.0, help="pause between ops (s): 0.005 shows "
                   "what an isolated op costs")
    p.add_argument("--strace", action="store_true", help="use strace even if the tracepoint works")
    a = p.parse_args()
    value = b"v" * 100
    run_op(a.op, a.path, value)  # warm the dentry cache first
    fc = FuseCounter(_mountpoint_of(a.path), a.pid)
    if a.strace and fc.instance is not None:
        fc.close()
        fc.how = "strace"

    def one() -> None:
        run_op(a.op, a.path, value)
        if a.sleep:
            time.sleep(a.sleep)

    try:
        t0 = time.perf_counter()
        counts = fc.count(one, a.repeat)
        per = (time.perf_counter() - t0) / a.repeat - a.sleep
    finally:
        fc.close()
    total = sum(counts.values())
    print(f"{a.op} {a.path} ({fc.how}): {a.repeat} ops, {total} FUSE requests "
          f"({total / a.repeat:.2f} per op), {per * 1e6:.0f} us per op while counting")
    for name, c in counts.most_common():
        print(f"  {name:<13} {c / a.repeat:7.2f} per op")
    if fc.how == "tracepoint":
        fc = FuseCounter(_mountpoint_of(a.path), a.pid)
        try:
            t = fc.timings(one, a.repeat)
        finally:
            fc.close()
        print("kernel-side latency per request (send -> reply), us:")
        for name, v in sorted(t.items(), key=lambda kv: -sum(kv[1])):
            v.sort()
            print(f"  {name:<13} n={len(v):<6} median {v[len(v) // 2]:8.0f}  p90 {v[int(len(v) * 0.9)]:8.0f}"
                  f"  total per op {sum(v) / a.repeat:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
