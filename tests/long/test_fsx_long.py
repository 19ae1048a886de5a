"""A longer fsx-style model test (tests/test_fsx.py at scale), beside tmpfs.

Random pwrite / ftruncate / pread / reopen on one descriptor, every read and
every fstat checked against an in-memory model. At each reopen the descriptor
is closed (on hvfs: one compare-and-swap publish) and then

* the value in NATS must equal the model (hvfs only),
* ``stat`` and a fresh ``open``+``read`` must show the model,
* a separate ``O_RDONLY`` descriptor mapped with
  ``mmap(fd, 0, MAP_SHARED, PROT_READ)`` must show the model,

before the read-write descriptor is opened again. Each sequence runs on tmpfs
first (which checks the model itself), then on the mount.

Two tests: hypothesis (EXAMPLES examples of up to 60 steps) and a plain loop
of LOOP_OPS random ops from a fixed seed.
"""

from __future__ import annotations

import mmap
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .common import EXAMPLES, LOOP_OPS, Rig, errors_tail, long_only, table

pytestmark = long_only

MAX = 65536
SEED = 20240611

Step = tuple[str, int, object]


class Mismatch(AssertionError):
    pass


@dataclass
class Tally:
    seconds: float = 0.0
    ops: Counter[str] = field(default_factory=Counter)
    mmap_failures: list[str] = field(default_factory=list)


class Fsx:
    """Applies steps to one file and to the model; raises Mismatch at the first difference."""

    def __init__(self, path: Path, nats_value: Callable[[], bytes | None] | None, tally: Tally) -> None:
        self.path = path
        self.nats_value = nats_value
        self.tally = tally
        self.model = bytearray()
        self.fd = -1
        self.n = 0

    def fail(self, what: str) -> None:
        raise Mismatch(f"{self.path} step {self.n}: {what}")

    def start(self, seed: bytes) -> None:
        self.model = bytearray(seed)
        self.path.write_bytes(seed)
        self.fd = os.open(self.path, os.O_RDWR)

    def step(self, op: str, a: int, b: object) -> None:
        self.n += 1
        self.tally.ops[op] += 1
        model = self.model
        if op == "write":
            assert isinstance(b, bytes)
            done = os.pwrite(self.fd, b, a)
            if done != len(b):
                self.fail(f"pwrite({len(b)} bytes at {a}) returned {done}")
            if a > len(model):
                model.extend(bytes(a - len(model)))
            model[a:a + len(b)] = b
        elif op == "truncate":
            os.ftruncate(self.fd, a)
            del model[a:]
            model.extend(bytes(a - len(model)))
        elif op == "read":
            assert isinstance(b, int)
            got = os.pread(self.fd, b, a)
            if got != bytes(model[a:a + b]):
                self.fail(f"pread({b} at {a}) gave {len(got)} bytes that differ from the model "
                          f"({len(model[a:a + b])} bytes){first_diff(got, bytes(model[a:a + b]))}")
        else:
            self.reopen()
        size = os.fstat(self.fd).st_size
        if size != len(model):
            self.fail(f"fstat size {size} after {op}, model {len(model)}")

    def reopen(self) -> None:
        fd, self.fd = self.fd, -1
        os.close(fd)
        want = bytes(self.model)
        if self.nats_value is not None:
            got = self.nats_value()
            if got != want:
                self.fail(f"after close NATS holds {None if got is None else len(got)} bytes, "
                          f"model {len(want)}{first_diff(got or b'', want)}")
        if (size := os.stat(self.path).st_size) != len(want):
            self.fail(f"stat size {size} after close, model {len(want)}")
        if (got := self.path.read_bytes()) != want:
            self.fail(f"a fresh open+read after close gave {len(got)} bytes, model {len(want)}"
                      f"{first_diff(got, want)}")
        if want:
            self.check_mmap(want)
        self.fd = os.open(self.path, os.O_RDWR)

    def check_mmap(self, want: bytes) -> None:
        """A separate O_RDONLY descriptor, mapped MAP_SHARED/PROT_READ, shows the model.

        A failure here is noted (``tally.mmap_failures``) and the run goes on, so
        the other checks still cover the whole sequence; the test fails at the end.
        """
        self.tally.ops["mmap"] += 1
        rfd = os.open(self.path, os.O_RDONLY)
        try:
            with mmap.mmap(rfd, 0, mmap.MAP_SHARED, mmap.PROT_READ) as m:
                got = m[:]
            if got != want:
                self.tally.mmap_failures.append(
                    f"{self.path} step {self.n}: mmap shows {len(got)} bytes, model {len(want)}"
                    f"{first_diff(got, want)}")
        except OSError as e:
            self.tally.mmap_failures.append(
                f"{self.path} step {self.n}: mmap(O_RDONLY fd, 0, MAP_SHARED, PROT_READ): {e!r}")
        finally:
            os.close(rfd)

    def finish(self) -> None:
        if self.fd >= 0:
            self.reopen()
            os.close(self.fd)
            self.fd = -1

    def abandon(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1


def first_diff(a: bytes, b: bytes) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"; first difference at byte {i}: {a[i:i + 8]!r} vs model {b[i:i + 8]!r}"
    return "" if len(a) == len(b) else f"; equal up to byte {min(len(a), len(b))}"


def run_steps(path: Path, nats_value: Callable[[], bytes | None] | None, tally: Tally,
              seed: bytes, steps: list[Step]) -> None:
    fsx = Fsx(path, nats_value, tally)
    t0 = time.perf_counter()
    try:
        fsx.start(seed)
        for op, a, b in steps:
            fsx.step(op, a, b)
        fsx.finish()
    finally:
        fsx.abandon()
        tally.seconds += time.perf_counter() - t0


@dataclass
class Side:
    rig: Rig
    bucket: str
    hvfs: Path
    tmpfs: Path

    def nats(self, name: str) -> Callable[[], bytes | None]:
        return lambda: self.rig.raw.value(self.bucket, name)


@pytest.fixture
def side(rig: Rig, tmpfs: Path) -> Iterator[Side]:
    bucket = rig.bucket("fsx", history=5)
    s = Side(rig, bucket, rig.mnt.path("kv", bucket), tmpfs)
    yield s


def report(title: str, hv: Tally, tm: Tally, examples: int, failure: str | None, rig: Rig) -> None:
    ops = sorted(set(hv.ops) | set(tm.ops))
    notes = [f"ops run on hvfs: {', '.join(f'{o} {hv.ops[o]:,}' for o in ops)}; every read, fstat "
             "and close checked (reopen: NATS value, stat, fresh read, mmap)"]
    sides = [("hvfs", hv, failure), ("tmpfs", tm, None)]
    for where, t, fail in sides:
        if fail:
            notes += [f"{where} FAILED:", f"    {fail}"]
        if t.mmap_failures:
            notes += [f"{where}: {len(t.mmap_failures):,} of {t.ops['mmap']:,} mmap checks FAILED "
                      "(the run went on without them), the first ones:"]
            notes += [f"    {m}" for m in t.mmap_failures[:3]]
    if (failure or hv.mmap_failures) and not rig.alive():
        notes += ["hvfs: last lines of .hvfs/errors:"] + [f"    {e}" for e in errors_tail(rig.mnt, 5)]
    rows = []
    for where, t, fail in sides:
        n = sum(t.ops.values())
        rows.append([where, examples, n, t.seconds, n / t.seconds if t.seconds else float("nan"),
                     len(t.mmap_failures), "FAILED" if fail or t.mmap_failures else "ok"])
    table(title, ["", "sequences", "ops", "seconds", "ops/s", "mmap failures", "result"], rows, notes)


def no_mmap_failures(hv: Tally, tm: Tally) -> None:
    assert not tm.mmap_failures, f"mmap on tmpfs (harness problem): {tm.mmap_failures[0]}"
    assert not hv.mmap_failures, (f"{len(hv.mmap_failures)} of {hv.ops['mmap']} mmap checks "
                                  f"failed on hvfs, first: {hv.mmap_failures[0]}")


ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, MAX), st.binary(min_size=1, max_size=4096)),
        st.tuples(st.just("truncate"), st.integers(0, MAX), st.just(b"")),
        st.tuples(st.just("read"), st.integers(0, MAX), st.integers(1, 8192)),
        st.tuples(st.just("reopen"), st.just(0), st.just(b"")),
    ),
    min_size=1,
    max_size=60,
)


@pytest.mark.timeout(3600)
def test_fsx_hypothesis(side: Side) -> None:
    hv, tm = Tally(), Tally()
    count = [0]

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)
    @given(steps=ops)
    def one(steps: list[Step]) -> None:
        count[0] += 1
        run_steps(side.tmpfs / "fsx_h", None, tm, b"seed", steps)
        run_steps(side.hvfs / "fsx_h", side.nats("fsx_h"), hv, b"seed", steps)

    failure = None
    try:
        one()
    except Exception as e:
        failure = f"{type(e).__name__}: {e}"
        raise
    finally:
        report(f"fsx model test, hypothesis: {EXAMPLES} examples of up to 60 steps "
               "(offsets < 64 KiB, writes <= 4 KiB)", hv, tm, count[0], failure, side.rig)
    no_mmap_failures(hv, tm)


def random_steps(rng: random.Random, n: int) -> list[Step]:
    steps: list[Step] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.45:
            steps.append(("write", rng.randrange(MAX), rng.randbytes(rng.randint(1, 4096))))
        elif r < 0.55:
            steps.append(("truncate", rng.randrange(MAX), b""))
        elif r < 0.95:
            steps.append(("read", rng.randrange(MAX), rng.randint(1, 8192)))
        else:
            steps.append(("reopen", 0, b""))
    return steps


@pytest.mark.timeout(1800)
def test_fsx_seeded_loop(side: Side) -> None:
    steps = random_steps(random.Random(SEED), LOOP_OPS)
    hv, tm = Tally(), Tally()
    seed = random.Random(SEED + 1).randbytes(1000)
    run_steps(side.tmpfs / "fsx_loop", None, tm, seed, steps)
    failure = None
    try:
        run_steps(side.hvfs / "fsx_loop", side.nats("fsx_loop"), hv, seed, steps)
    except Exception as e:
        failure = f"{type(e).__name__}: {e}"
        raise
    finally:
        report(f"fsx model test, seeded loop: {LOOP_OPS:,} random ops, seed {SEED}", hv, tm, 1,
               failure, side.rig)
    no_mmap_failures(hv, tm)
