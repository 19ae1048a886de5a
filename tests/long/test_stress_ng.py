"""stress-ng file system stressors in a directory of a mounted bucket, beside tmpfs.

Each stressor runs once (one instance, ``SECONDS`` long) with ``--temp-path``
in ``kv/<bucket>/sng`` of a fresh mount, then the same on a fresh tmpfs.
Passing means: stress-ng exits 0, prints no ``fail``/``failed`` line, does
not finish prematurely, does some work, and the mount still answers.
The errors the mount returned meanwhile (``.hvfs/errors``) are counted and
listed under the table.

``--filename`` runs with ``--filename-opts posix`` (names from the POSIX
portable set): its default, ``probe``, uses every byte the file system
accepts, and now and then makes a name ending in ``@`` and digits, which on
hvfs is ``FILE@REV`` (docs/naming.md): ``open(O_CREAT)`` of it is a
compare-and-swap on that revision and fails ESTALE, as documented.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .common import SECONDS, ErrorWatch, Rig, long_only, need_tool, run, table

pytestmark = long_only

STRESSORS = ["filename", "rename", "dentry", "dir", "open"]
EXTRA = {"filename": ["--filename-opts", "posix"]}

_METRIC = re.compile(r"stress-ng: metrc: \[\d+\] (\S+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)"
                     r"\s+([\d.]+)\s+([\d.]+)")


@dataclass
class Stress:
    where: str
    rc: int | None
    out: str
    seconds: float
    bogo_ops: int = 0
    ops_per_s: float = float("nan")
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def status(self) -> str:
        return "ok" if self.ok else "FAILED"


def stress(name: str, temp_path: Path, where: str) -> Stress:
    temp_path.mkdir(parents=True, exist_ok=True)
    cmd = [need_tool("stress-ng"), f"--{name}", "1", *EXTRA.get(name, []), "--timeout", f"{SECONDS}s",
           "--metrics-brief", "--temp-path", str(temp_path)]
    # cwd too: some stressors (open) make files relative to it, which belong on the fs under test
    r = run(cmd, timeout=SECONDS + 180, cwd=temp_path)
    s = Stress(where, r.rc, r.out, r.seconds)
    for m in _METRIC.finditer(r.out):
        if m.group(1) == name:
            s.bogo_ops = int(m.group(2))
            s.ops_per_s = float(m.group(6))
    if r.rc is None:
        s.problems.append(f"stress-ng killed: no exit within {SECONDS + 180}s")
    elif r.rc != 0:
        s.problems.append(f"stress-ng exit code {r.rc}")
    for line in r.out.splitlines():
        low = line.lower()
        if "fail" in low or "prematurely" in low or "unsuccessful" in low:
            s.problems.append(line.strip())
    if s.bogo_ops == 0:
        s.problems.append("no bogo ops reported (no metrics line, or 0 ops)")
    return s


@pytest.fixture(scope="module")
def results() -> Iterator[dict[str, tuple[Stress, Stress]]]:
    got: dict[str, tuple[Stress, Stress]] = {}
    yield got
    if got:
        table(f"stress-ng, 1 instance each, {SECONDS}s per stressor: bogo ops/s (real time)",
              ["stressor", "hvfs ops/s", "tmpfs ops/s", "hvfs/tmpfs", "hvfs bogo ops", "hvfs",
               "tmpfs"],
              [[n, h.ops_per_s, t.ops_per_s, ratio(h.ops_per_s, t.ops_per_s), h.bogo_ops,
                h.status(), t.status()] for n, (h, t) in got.items()],
              [f"--filename runs with {' '.join(EXTRA['filename'])} (see tests/long/test_stress_ng.py)"])


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b and a == a and b == b else "-"


@pytest.mark.timeout(2 * SECONDS + 600)
@pytest.mark.parametrize("name", STRESSORS)
def test_stress_ng(name: str, rig: Rig, tmpfs: Path,
                   results: dict[str, tuple[Stress, Stress]]) -> None:
    bucket = rig.bucket("sng", history=1)
    with ErrorWatch(rig.mnt) as errs:
        on_hvfs = stress(name, rig.mnt.path("kv", bucket, "sng"), "hvfs")
    broken = rig.alive()
    on_hvfs.problems += [f"after the run: {b}" for b in broken]
    on_tmpfs = stress(name, tmpfs / "sng", "tmpfs")
    results[name] = (on_hvfs, on_tmpfs)

    notes = []
    for s in (on_hvfs, on_tmpfs):
        if not s.ok:
            notes += [f"{s.where}: stress-ng {name} FAILED ({len(s.problems)} problem lines):"]
            notes += [f"    {p}" for p in s.problems]
            notes += [f"  {s.where}: full stress-ng output (rc={s.rc}, {s.seconds:.1f}s):"]
            notes += [f"    {line}" for line in s.out.strip().splitlines()[-60:]]
    if errs.lines or errs.missed:
        notes += [f"hvfs: {len(errs.lines) + errs.missed:,} errors returned during the run "
                  "(.hvfs/errors), by kind:"]
        notes += [f"    {k}" for k in errs.summary()]
    else:
        notes.append("hvfs: no errors returned during the run (.hvfs/errors)")
    named = {int(e) for p in on_hvfs.problems for e in re.findall(r"errno=(\d+)", p)}
    if named:
        notes += [f"hvfs: .hvfs/errors lines with errno {sorted(named)}:"]
        notes += [f"    {e}" for e in errs.with_errno(named)] or ["    (none sampled)"]
    table(" ".join(["stress-ng", f"--{name}", "1", *EXTRA.get(name, []), f"--timeout {SECONDS}s"]),
          ["", "bogo ops", "bogo ops/s (real)", "wall s", "exit", "result"],
          [[s.where, s.bogo_ops, s.ops_per_s, s.seconds, s.rc, s.status()]
           for s in (on_hvfs, on_tmpfs)], notes)

    assert on_tmpfs.ok, f"stress-ng --{name} fails on tmpfs too (harness problem): {on_tmpfs.problems}"
    assert on_hvfs.ok, f"stress-ng --{name} on hvfs: " + " / ".join(on_hvfs.problems[:12])
