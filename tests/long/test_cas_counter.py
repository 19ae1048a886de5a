"""The read-modify-write recipes of docs/posix.md at scale: one counter, 8 processes
on two mounts of one server, 200 increments each, no update lost.

Two runs: the shell recipe (getfattr, ``cat FILE@REV``, ``tee FILE@REV``) and
the Python recipe (one descriptor, ``close()`` is the compare-and-swap). Each
worker prints how many increments were acknowledged and how often it had to
retry; the final value in NATS (and on both mounts) must equal the sum of the
acknowledged increments, 1,600. For scale, the same workers run on tmpfs with
a local ``flock`` instead of the compare-and-swap (tmpfs has none).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from ..helpers import wait_for
from .common import Rig, errors_tail, kill_group, long_only, table

pytestmark = long_only

PROCS = 8
INCREMENTS = 200
DEADLINE = 900.0  # seconds for the whole run of 8 workers

# The shell recipe of docs/posix.md, wrapped in a counting loop; stderr of the
# recipe's commands goes to a file (the doc's 2>&1 >/dev/null) so ESTALE can be counted.
SHELL_HVFS = r"""
cd "$1"; errlog=$3; ok=0; retries=0; i=0
while [ "$i" -lt "$2" ]; do
  until
    rev=$(getfattr --only-values -n user.hvfs.revision counter 2>>"$errlog") &&   # latest revision, fresh
    n=$(cat "counter@$rev" 2>>"$errlog") &&                                        # exactly that revision
    echo $((n + 1)) | tee "counter@$rev" >/dev/null 2>>"$errlog"                # CAS on it
  do retries=$((retries + 1)); done
  ok=$((ok + 1)); i=$((i + 1))
done
echo "{\"ok\": $ok, \"retries\": $retries}"
"""

SHELL_TMPFS = r"""
cd "$1"; ok=0; i=0
while [ "$i" -lt "$2" ]; do
  flock counter.lock sh -c 'n=$(cat counter); echo $((n + 1)) > counter' && ok=$((ok + 1))
  i=$((i + 1))
done
echo "{\"ok\": $ok, \"retries\": 0}"
"""

# The Python recipe of docs/posix.md, counting its ESTALE retries.
PY_HVFS = textwrap.dedent("""
    import errno, json, os, sys
    path, count = sys.argv[1], int(sys.argv[2])
    ok = estale = 0
    for _ in range(count):
        while True:
            fd = os.open(path, os.O_RDWR)
            n = int(os.read(fd, 64) or b"0")
            os.ftruncate(fd, 0)
            os.pwrite(fd, b"%d" % (n + 1), 0)
            try:
                os.close(fd)          # ESTALE: another writer got in first; read again
                break
            except OSError as e:
                if e.errno != errno.ESTALE:
                    raise
                estale += 1
        ok += 1
    print(json.dumps({"ok": ok, "retries": estale, "estale": estale}))
""")

PY_TMPFS = textwrap.dedent("""
    import fcntl, json, os, sys
    path, count = sys.argv[1], int(sys.argv[2])
    lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT)
    for _ in range(count):
        fcntl.flock(lock, fcntl.LOCK_EX)
        fd = os.open(path, os.O_RDWR)
        n = int(os.read(fd, 64) or b"0")
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"%d" % (n + 1), 0)
        os.close(fd)
        fcntl.flock(lock, fcntl.LOCK_UN)
    print(json.dumps({"ok": count, "retries": 0, "estale": 0}))
""")


@dataclass
class Run:
    where: str
    seconds: float = 0.0
    acked: int = 0
    retries: int = 0
    estale: int = 0
    final: bytes | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.acked / self.seconds if self.seconds else float("nan")


def workers(cmds: list[tuple[list[str], Path]], where: str) -> Run:
    """Start every worker at once; wait for all (DEADLINE for the lot); kill stragglers by PID."""
    r = Run(where)
    procs: list[subprocess.Popen[str]] = []
    t0 = time.monotonic()
    try:
        for cmd, cwd in cmds:
            procs.append(subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          stdin=subprocess.DEVNULL, text=True, start_new_session=True))
        for i, p in enumerate(procs):
            left = max(1.0, DEADLINE - (time.monotonic() - t0))
            try:
                out, err = p.communicate(timeout=left)
            except subprocess.TimeoutExpired:
                kill_group(p)
                out, err = p.communicate(timeout=30)
                r.problems.append(f"worker {i}: no exit within the {DEADLINE:.0f}s deadline (killed)")
            if p.returncode not in (0, None):
                r.problems.append(f"worker {i}: exit {p.returncode}: {err.strip()[-500:]}")
            try:
                res = json.loads(out.strip().splitlines()[-1])
            except (ValueError, IndexError):
                r.problems.append(f"worker {i}: no result line (stdout {out[-200:]!r})")
                continue
            r.acked += int(res["ok"])
            r.retries += int(res["retries"])
            r.estale += int(res.get("estale", 0))
    finally:
        for p in procs:
            if p.poll() is None:
                kill_group(p)
    r.seconds = time.monotonic() - t0
    return r


def counter_is(d: Path, value: bytes) -> bool:
    return (d / "counter").read_bytes().strip() == value


def count_estale(errlogs: list[Path]) -> tuple[int, list[str]]:
    """ESTALE lines (tee's "Stale file handle") and the other error lines of the shell workers."""
    estale, other = 0, []
    for log in errlogs:
        for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
            if "Stale file handle" in line:
                estale += 1
            elif line.strip():
                other.append(line.strip())
    return estale, other


@pytest.mark.timeout(2 * DEADLINE + 300)
@pytest.mark.parametrize("recipe", ["shell", "python"])
def test_cas_counter(recipe: str, rig2: Rig, tmpfs: Path, tmp_path: Path) -> None:
    bucket = rig2.bucket("cas", history=10)
    rig2.raw.put(bucket, "counter", b"0")
    dirs = [m.path("kv", bucket) for m in rig2.mounts]
    for d in dirs:
        wait_for(partial(counter_is, d, b"0"), 10, f"counter in {d}")
    (tmpfs / "counter").write_bytes(b"0")

    errlogs = [tmp_path / f"worker{i}.err" for i in range(PROCS)]
    if recipe == "shell":
        hv_cmds = [(["sh", "-c", SHELL_HVFS, "sh", str(dirs[i % 2]), str(INCREMENTS), str(errlogs[i])],
                    dirs[i % 2]) for i in range(PROCS)]
        tm_cmds = [(["sh", "-c", SHELL_TMPFS, "sh", str(tmpfs), str(INCREMENTS)], tmpfs)
                   for _ in range(PROCS)]
    else:
        hv_cmds = [([sys.executable, "-c", PY_HVFS, str(dirs[i % 2] / "counter"), str(INCREMENTS)],
                    dirs[i % 2]) for i in range(PROCS)]
        tm_cmds = [([sys.executable, "-c", PY_TMPFS, str(tmpfs / "counter"), str(INCREMENTS)], tmpfs)
                   for _ in range(PROCS)]

    hv = workers(hv_cmds, "hvfs (2 mounts)")
    other: list[str] = []
    if recipe == "shell":
        hv.estale, other = count_estale(errlogs)
    hv.final = rig2.raw.value(bucket, "counter")
    want = str(hv.acked).encode()
    if hv.acked != PROCS * INCREMENTS:
        hv.problems.append(f"{hv.acked} increments acknowledged, {PROCS * INCREMENTS} expected")
    if (hv.final or b"").strip() != want:
        hv.problems.append(f"NATS holds {hv.final!r}, acknowledged increments: {hv.acked}")
    for d in dirs:
        try:
            wait_for(partial(counter_is, d, want), 10, f"{want!r} in {d}")
        except AssertionError as e:
            hv.problems.append(str(e))

    tm = workers(tm_cmds, "tmpfs + flock")
    tm.final = (tmpfs / "counter").read_bytes()
    if tm.final.strip() != str(PROCS * INCREMENTS).encode():
        tm.problems.append(f"tmpfs counter is {tm.final!r}")

    notes = [f"{PROCS} processes x {INCREMENTS} increments; hvfs: workers alternate between the two "
             "mounts; tmpfs: the same loop under a local flock (no CAS there)",
             "retries: failed rounds of the recipe; ESTALE: of those, lost compare-and-swaps"]
    if recipe == "shell":
        notes.append(f"shell: {len(other)} other error lines from getfattr/cat/tee"
                     + (" (first ones below)" if other else ""))
        notes += [f"    {line}" for line in other[:10]]
    for r in (hv, tm):
        if r.problems:
            notes += [f"{r.where} FAILED:"] + [f"    {p}" for p in r.problems]
    if hv.problems and not rig2.alive():
        for m in rig2.mounts:
            notes += [f"{m.mountpoint} .hvfs/errors (last lines):"] + [f"    {e}" for e in errors_tail(m, 5)]
    table(f"CAS counter, {recipe} recipe (docs/posix.md)",
          ["", "acked", "final", "total s", "increments/s", "retries", "ESTALE", "result"],
          [[r.where, r.acked, (r.final or b"").strip().decode(errors="replace"), r.seconds, r.rate,
            r.retries, r.estale if r is hv else "-", "ok" if not r.problems else "FAILED"]
           for r in (hv, tm)], notes)
    assert not tm.problems, f"tmpfs baseline (harness problem): {tm.problems}"
    assert not hv.problems, "; ".join(hv.problems)
