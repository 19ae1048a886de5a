"""fio random read/write on a file in a mounted bucket, beside tmpfs.

Three runs on each side, all ``--bs=4k --size=256k --ioengine=psync --direct=0``
(KV values are limited to about 1 MiB):

* ``randrw``: ``--rw=randrw --time_based --runtime=SECONDS`` with
  ``--verify=crc32c --verify_backlog=16`` (fio reads back and checks what it
  wrote every 16 writes, through the same descriptor). One open, one close:
  on hvfs the whole run is one handle and its close publishes one revision.
* ``randrw+fsync``: the same for SECONDS/2 with ``--fsync=64``: on hvfs every
  fsync publishes the 256 KiB value as a new revision (compare-and-swap).
* ``write, close, verify``: ``--rw=randwrite --verify=crc32c`` with a fixed
  seed writes every block once and closes; a second fio with the same job and
  ``--verify_only`` opens the file again (on hvfs: fetched from NATS) and
  checks every block.

Passing means: fio exits 0 with ``error`` 0 and no verify failure, and after
each run on hvfs the value in NATS equals the file read through the mount.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .common import SECONDS, Rig, errors_tail, long_only, need_tool, run, table

pytestmark = long_only

# --verify_state_save=0: no local-*-verify.state files left in fio's cwd
COMMON = ["--bs=4k", "--size=256k", "--ioengine=psync", "--direct=0", "--verify_state_save=0"]


@dataclass
class Fio:
    where: str
    rc: int | None
    out: str
    job: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)

    def io(self, rw: str, what: str) -> float:
        if not self.job:
            return float("nan")
        d = self.job[rw]
        if what == "iops":
            return float(d["iops"])
        if what == "ios":
            return float(d["total_ios"])
        clat = d["clat_ns"]
        if not clat.get("N"):
            return float("nan")
        if what == "mean":
            return float(clat["mean"]) / 1000
        return float(clat.get("percentile", {}).get(what, float("nan"))) / 1000


def fio(name: str, path: Path, where: str, args: list[str], timeout: float) -> Fio:
    out_json = path.parent / f".{name}-{where}.json"
    cmd = [need_tool("fio"), f"--name={name}", f"--filename={path}", *COMMON, *args,
           "--output-format=json", f"--output={out_json}"]
    r = run(cmd, timeout=timeout, cwd=path.parent)
    job = None
    try:
        job = json.loads(out_json.read_text())["jobs"][0]
    except (OSError, ValueError, KeyError, IndexError) as e:
        parse_error = f"no fio JSON result ({type(e).__name__}: {e})"
    else:
        parse_error = ""
    finally:
        out_json.unlink(missing_ok=True)
    f = Fio(where, r.rc, r.out, job)
    if r.rc is None:
        f.problems.append(f"fio killed: no exit within {timeout:.0f}s")
    elif r.rc != 0:
        f.problems.append(f"fio exit code {r.rc}")
    if parse_error:
        f.problems.append(parse_error)
    if job and job.get("error"):
        f.problems.append(f"fio job error {job['error']}")
    f.problems += [line.strip() for line in r.out.splitlines()
                   if any(w in line.lower() for w in ("verify", "error", "fail"))]
    return f


def check_nats(rig: Rig, bucket: str, key: str, path: Path, f: Fio) -> None:
    """After fio closed the file: NATS holds what the mount shows, all 256 KiB of it."""
    try:
        via_mount = path.read_bytes()
    except OSError as e:
        f.problems.append(f"reading {path.name} back through the mount: {e}")
        return
    in_nats = rig.raw.value(bucket, key)
    if in_nats is None:
        f.problems.append(f"key {key} is not in NATS")
    elif in_nats != via_mount:
        f.problems.append(f"NATS value ({len(in_nats)} bytes) differs from the mount's "
                          f"({len(via_mount)} bytes)")
    if len(via_mount) != 256 * 1024:
        f.problems.append(f"file is {len(via_mount)} bytes, not 262144")


RUNS = {
    "randrw": (["--rw=randrw", "--time_based", f"--runtime={SECONDS}", "--verify=crc32c",
                "--verify_backlog=16", "--verify_fatal=1"], SECONDS),
    "randrw_fsync": (["--rw=randrw", "--time_based", f"--runtime={max(1, SECONDS // 2)}",
                      "--fsync=64"], max(1, SECONDS // 2)),
}


@pytest.mark.timeout(3 * SECONDS + 900)
def test_fio(rig: Rig, tmpfs: Path) -> None:
    bucket = rig.bucket("fio", history=5)
    hv_dir = rig.mnt.path("kv", bucket, "fio")
    hv_dir.mkdir()
    tm_dir = tmpfs / "fio"
    tm_dir.mkdir()

    rows, notes, failed = [], [], []

    def record(label: str, pair: tuple[Fio, ...]) -> None:
        for f in pair:
            if f.problems:
                failed.append(f"{label} on {f.where}: " + " / ".join(f.problems[:8]))
                notes.append(f"{label} on {f.where} FAILED (rc={f.rc}):")
                notes.extend(f"    {p}" for p in f.problems[:40])
                notes.extend(f"    | {line}" for line in f.out.strip().splitlines()[-20:])

    for label, (args, secs) in RUNS.items():
        hv = fio(label, hv_dir / f"{label}.bin", "hvfs", args, secs + 300)
        check_nats(rig, bucket, f"fio.{label}=2Ebin", hv_dir / f"{label}.bin", hv)
        tm = fio(label, tm_dir / f"{label}.bin", "tmpfs", args, secs + 300)
        for f in (hv, tm):
            rows.append([label, f.where, f.io("read", "iops"), f.io("write", "iops"),
                         f.io("read", "mean"), f.io("read", "50.000000"), f.io("read", "99.000000"),
                         f.io("write", "mean"), f.io("write", "50.000000"),
                         f.io("write", "99.000000"), "ok" if not f.problems else "FAILED"])
        record(label, (hv, tm))

    # write every block once, close, then verify in a second fio (hvfs: a fresh open from NATS)
    seq = ["--rw=randwrite", "--verify=crc32c", "--randseed=20240611"]
    for where, d in (("hvfs", hv_dir), ("tmpfs", tm_dir)):
        w = fio("wv", d / "wv.bin", where, [*seq, "--do_verify=0"], 300)
        if where == "hvfs":
            check_nats(rig, bucket, "fio.wv=2Ebin", d / "wv.bin", w)
        v = fio("wv", d / "wv.bin", where, [*seq, "--verify_only"], 300)
        rows.append(["write, close, verify", where, v.io("read", "iops"), w.io("write", "iops"),
                     v.io("read", "mean"), v.io("read", "50.000000"), v.io("read", "99.000000"),
                     w.io("write", "mean"), w.io("write", "50.000000"), w.io("write", "99.000000"),
                     "ok" if not (w.problems or v.problems) else "FAILED"])
        record("write (write, close, verify)", (w,))
        record("verify_only (write, close, verify)", (v,))

    if failed and not rig.alive():
        notes += ["hvfs: last lines of .hvfs/errors:"] + [f"    {e}" for e in errors_tail(rig.mnt)]
    notes.insert(0, "latencies are fio clat in us; randrw read IOPS include the verify_backlog reads")
    table(f"fio 4k random I/O on a 256 KiB file ({SECONDS}s randrw, {max(1, SECONDS // 2)}s "
          "randrw with fsync every 64 writes)",
          ["run", "", "read IOPS", "write IOPS", "read mean", "read p50", "read p99",
           "write mean", "write p50", "write p99", "result"], rows, notes)
    assert not failed, "; ".join(failed)
