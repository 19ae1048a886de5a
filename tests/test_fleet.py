"""Typed bindings, TTLs and writer identity (docs/entities.md, docs/config.md) on real mounts.

``fleet`` and ``fleet2`` mount examples/fleet.yml as agents ag-7 and ag-9;
``tt`` mounts a small config of this module twice (a 2 s TTL binding, a
read-only binding, a project's own model). ``raw`` is another NATS client
and the judge of what NATS holds: every refused write is checked to have
left the value in NATS as it was (revision and bytes). Nothing sleeps to
synchronise; the TTL tests let wall-clock time pass because time passing is
what they test (``sleep_until``), and wait for effects with ``wait_for``.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest
import yaml

from hvfs.codec import json_schema
from hvfs.entities import SCHEMAS, Claim, Issue
from hvfs.server import EmbeddedServer

from .helpers import Inotify, Mount, RawNats, add_stream, history, is_mounted, wait_for

REPO = Path(__file__).resolve().parent.parent
_ids = itertools.count(1)

#: the seed's top-level directories, and the raw view's (docs/entities.md)
FLEET_DIRS = ["_meta", "agents", "claims", "issues", "kv", "links", "obj", "overlays", "queues",
              "streams", "threads", "work"]
ISSUE_FIELDS = list(Issue.model_fields)


# -- helpers ------------------------------------------------------------------------


def sh(script: str, cwd: str | Path | None = None, check: bool = True,
       timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with bash; fail with its stderr when ``check`` and it exits non-zero."""
    p = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"bash -c {script!r} exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def new_id(kind: str = "is") -> str:
    return f"{kind}-fl{next(_ids)}"


def write_errno(path: Path, data: bytes, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                ) -> tuple[str, int | None] | None:
    """open/write/close ``path``; the first call that failed and its errno (None: all succeeded)."""
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        return "open", e.errno
    err: tuple[str, int | None] | None = None
    try:
        os.write(fd, data)
    except OSError as e:
        err = "write", e.errno
    try:
        os.close(fd)
    except OSError as e:
        err = err or ("close", e.errno)
    return err


def entry(raw: RawNats, bucket: str, key: str) -> tuple[int, bytes] | None:
    """(revision, value) of ``key`` in NATS; None when it has none (deleted or never written)."""
    try:
        e = raw.get(bucket, key)
    except nats.js.errors.KeyNotFoundError:
        return None
    return int(e.revision), bytes(e.value or b"")


def last_msg(raw: RawNats, bucket: str, key: str) -> Any:
    """The key's newest message, with its headers."""
    return raw.run(raw.js.get_last_msg(f"KV_{bucket}", f"$KV.{bucket}.{key}"))


def has_no_value(raw: RawNats, bucket: str, key: str) -> bool:
    """The key's newest message is a delete marker (the mount's, or the server's for an
    expired TTL, which nats-py 2.16 reads as an empty value), or there is none left."""
    try:
        h = last_msg(raw, bucket, key).headers or {}
    except nats.js.errors.NotFoundError:
        return True
    return h.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in h


def xattr(path: Path, name: str) -> str:
    return os.getxattr(path, name).decode()


def rel(m: Mount, path: Path) -> str:
    """``path`` as the mount names it in .hvfs/errors ("/issues/is-1.yml")."""
    return "/" + str(path.relative_to(m.mountpoint))


def error_lines(m: Mount) -> list[dict[str, Any]]:
    return [json.loads(line) for line in m.path(".hvfs", "errors").read_text().splitlines() if line.strip()]


def conflict_entries(m: Mount, bucket: str, key: str) -> list[tuple[dict[str, Any], bytes]]:
    cdir = m.path(".hvfs", "conflicts")
    out = []
    for line in (cdir / "index").read_text().splitlines():
        if line.strip():
            c = json.loads(line)
            if c["bucket"] == bucket and c["key"] == key:
                out.append((c, (cdir / c["file"]).read_bytes()))
    return out


def make_issue(raw: RawNats, *mounts: Mount, title: str = "an issue") -> str:
    """A fresh valid issue, put by the raw client; returned once every mount shows it."""
    iid = new_id()
    raw.put("fleet_issues", iid, json.dumps({"type": "is", "id": iid, "title": title}).encode())
    for m in mounts:
        p = m.path("issues", f"{iid}.yml")
        wait_for(p.exists, what=f"{p}")
    return iid


def sleep_until(t_wall: float) -> None:
    """Let wall-clock time pass up to ``t_wall`` (the TTL tests are about time passing;
    this is never a wait for something to happen: those use wait_for)."""
    left = t_wall - time.time()
    if left > 0:
        time.sleep(left)


def assert_refused(m: Mount, raw: RawNats, path: Path, bucket: str, key: str, data: bytes,
                   why: str, flags: int = os.O_WRONLY | os.O_TRUNC) -> None:
    """A write of ``data`` fails with EINVAL at close, changes nothing in NATS, and says ``why``
    in user.hvfs.error (while the file exists), .hvfs/errors and .hvfs/conflicts/."""
    before = entry(raw, bucket, key)
    shown = path.read_bytes() if before is not None else None
    kept_before = len(conflict_entries(m, bucket, key))
    assert write_errno(path, data, flags) == ("close", errno.EINVAL)
    assert entry(raw, bucket, key) == before, "a refused write changed NATS"
    if before is not None:
        reason = xattr(path, "user.hvfs.error")
        assert why in reason, reason
        assert path.read_bytes() == shown, "the file no longer shows the stored value"
    errs = [e for e in error_lines(m) if e["path"] == rel(m, path) and e["errno"] == errno.EINVAL]
    assert errs and why in errs[-1]["reason"], error_lines(m)[-3:]
    kept = conflict_entries(m, bucket, key)
    assert len(kept) == kept_before + 1
    c, body = kept[-1]
    assert body == data and c["errno"] == errno.EINVAL and why in c["reason"], c


# -- the module's own mounts: short TTL, read-only, a project's model --------------------

TT_CONFIG = """\
meta: _meta
bindings:
  - path: presence
    kv: tt_presence
    format: yaml
    schema: agent
    ttl: 2
  - path: ro
    kv: tt_ro
    format: yaml
    schema: issue
    read_only: true
  - path: notes
    kv: tt_notes
    format: json
    schema: tests.fleet_models:Note
"""
TTL = 2


@pytest.fixture(scope="module")
def tt(server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mount, Mount]]:
    """TT_CONFIG mounted twice (writers tt-a, tt-b)."""
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("/dev/fuse is not available")
    base = tmp_path_factory.mktemp("tt")
    cfg = base / "tt.yml"
    cfg.write_text(TT_CONFIG)
    a = Mount(base / "a", server.url, "--config", str(cfg), "--writer", "tt-a")
    b = Mount(base / "b", server.url, "--config", str(cfg), "--writer", "tt-b")
    try:
        with pytest.MonkeyPatch.context() as mp:  # the mounts import tests.fleet_models
            mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
            a.start()
            b.start()
        yield a, b
    finally:
        b.stop()
        a.stop()


# -- 1. the layout ------------------------------------------------------------------------


def test_root_lists_the_seed_layout(fleet):
    assert sh("ls", cwd=fleet.mountpoint).stdout.split() == FLEET_DIRS
    assert sh("ls -a", cwd=fleet.mountpoint).stdout.split() == [".", "..", ".hvfs", *FLEET_DIRS]
    for d in FLEET_DIRS:
        assert fleet.path(d).is_dir()


# -- 2, 3. the yaml binding: JSON in NATS, YAML in the file -----------------------------------


def test_yaml_write_is_stored_as_compact_json_and_shown_as_yaml(fleet, fleet2, raw):
    iid = new_id()
    p = fleet.path("issues", f"{iid}.yml")
    p.write_bytes(b"labels: [ui, login]\ntitle: Fix the login page\npriority: 1\n")
    stored = raw.value("fleet_issues", iid)
    doc = json.loads(stored)
    assert stored == json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()  # compact
    assert list(doc) == [f for f in ISSUE_FIELDS if f != "assignee"]  # model order, null left out
    assert doc["type"] == "is" and doc["id"] == iid and doc["title"] == "Fix the login page"
    assert doc["priority"] == 1 and doc["labels"] == ["ui", "login"] and doc["status"] == "open"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", doc["created_at"])
    p2 = fleet2.path("issues", f"{iid}.yml")
    wait_for(p2.exists, what=f"{p2}")
    for m in (fleet, fleet2):
        shown = sh(f"cat issues/{iid}.yml", cwd=m.mountpoint).stdout.encode()
        assert yaml.safe_load(shown) == doc
        assert re.findall(r"(?m)^(\w+):", shown.decode()) == list(doc)  # YAML, in the model's field order
        assert shown.startswith(f"type: is\nid: {iid}\ntitle: Fix the login page\n".encode())
        size = int(sh(f"ls -l issues/{iid}.yml", cwd=m.mountpoint).stdout.split()[4])
        assert size == len(shown) == os.stat(m.path("issues", f"{iid}.yml")).st_size


def test_file_name_without_the_format_extension_is_einval(fleet, raw):
    iid = new_id()
    assert write_errno(fleet.path("issues", iid), b"title: x\n") == ("open", errno.EINVAL)
    assert entry(raw, "fleet_issues", iid) is None
    assert iid not in os.listdir(fleet.path("issues"))
    r = sh(f"echo 'title: x' > issues/{iid}", cwd=fleet.mountpoint, check=False)
    assert r.returncode != 0 and "Invalid argument" in r.stderr
    assert any(e["path"] == f"/issues/{iid}" and "named KEY.yml" in e["reason"] for e in error_lines(fleet))


def test_json_from_a_nats_client_shows_as_yaml_on_both_mounts(fleet, fleet2, raw):
    iid = new_id()
    raw.put("fleet_issues", iid, json.dumps({"priority": 3, "title": "from nats-py", "id": iid}).encode())
    for m in (fleet, fleet2):
        p = m.path("issues", f"{iid}.yml")
        wait_for(p.exists, what=f"{p}")
        # As stored (nothing filled at read time), in the model's order.
        assert p.read_bytes() == f"id: {iid}\ntitle: from nats-py\npriority: 3\n".encode()
        with pytest.raises(OSError) as e:
            os.getxattr(p, "user.hvfs.error")
        assert e.value.errno == errno.ENODATA


def test_yaml_from_the_mount_reads_as_json_in_a_nats_client(fleet, fleet2, raw):
    iid = new_id()
    sh(f"printf 'title: written as YAML\\nkind: bug\\nlabels:\\n  - a\\n  - b\\n' > issues/{iid}.yml",
       cwd=fleet.mountpoint)
    doc = json.loads(raw.value("fleet_issues", iid))
    assert doc["kind"] == "bug" and doc["labels"] == ["a", "b"] and doc["title"] == "written as YAML"
    p2 = fleet2.path("issues", f"{iid}.yml")
    wait_for(p2.exists, what=f"{p2}")
    assert yaml.safe_load(p2.read_bytes()) == doc


# -- 4. refused writes -------------------------------------------------------------------------


def test_bad_yaml_syntax_is_refused(fleet, raw):
    iid = make_issue(raw, fleet)
    assert_refused(fleet, raw, fleet.path("issues", f"{iid}.yml"), "fleet_issues", iid,
                   b"title: [unclosed\n", "line 2, column 1")


def test_unknown_field_is_refused(fleet, raw):
    iid = make_issue(raw, fleet)
    assert_refused(fleet, raw, fleet.path("issues", f"{iid}.yml"), "fleet_issues", iid,
                   b"title: x\nprio: 1\n", "prio: Extra inputs are not permitted (did you mean priority?)")


def test_value_outside_an_enum_is_refused(fleet, raw):
    iid = make_issue(raw, fleet)
    assert_refused(fleet, raw, fleet.path("issues", f"{iid}.yml"), "fleet_issues", iid,
                   b"title: x\nstatus: sleeping\n", "status: Input should be 'open'")


def test_id_contradicting_the_file_name_is_refused(fleet, raw):
    iid = make_issue(raw, fleet)
    assert_refused(fleet, raw, fleet.path("issues", f"{iid}.yml"), "fleet_issues", iid,
                   b"id: is-other\ntitle: x\n", f"id is-other does not match the file name {iid}")


def test_tee_reports_the_refused_close(fleet, raw):
    iid = make_issue(raw, fleet)
    before = entry(raw, "fleet_issues", iid)
    r = sh(f"echo 'priority: 9' | tee issues/{iid}.yml", cwd=fleet.mountpoint, check=False)
    assert r.returncode == 1 and "Invalid argument" in r.stderr
    assert entry(raw, "fleet_issues", iid) == before
    assert "priority: Input should be less than or equal to 4" in \
        sh(f"getfattr --only-values -n user.hvfs.error issues/{iid}.yml", cwd=fleet.mountpoint).stdout


def test_claim_of_a_missing_issue_is_refused_and_its_create_taken_back(fleet, fleet2, raw):
    missing = new_id()
    d = fleet.path("claims", missing)
    d.mkdir()
    key = f"{missing}.owner"
    assert_refused(fleet, raw, d / "owner.yml", "fleet_claims", key, b"agent_id: ag-7\n",
                   f"issue_id: {missing} does not exist (issues/{missing}.yml)",
                   flags=os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    assert os.listdir(d) == []
    assert entry(raw, "fleet_claims", key) is None
    assert [r.operation for r in history(raw, "fleet_claims", key)] == ["DEL"]  # the create, taken back
    assert not fleet2.path("claims", missing, "owner.yml").exists()


def test_create_in_the_mount_root_is_eperm(fleet, raw):
    buckets = sorted(os.listdir(fleet.path("kv")))
    assert write_errno(fleet.path("stray.yml"), b"x: 1\n") == ("open", errno.EPERM)
    with pytest.raises(OSError) as e:
        fleet.path("stray-dir").mkdir()
    assert e.value.errno == errno.EPERM
    assert "stray.yml" not in os.listdir(fleet.mountpoint)
    assert sorted(os.listdir(fleet.path("kv"))) == buckets
    assert any(x["path"] == "/stray.yml" and x["errno"] == errno.EPERM for x in error_lines(fleet))


def test_rename_contradicting_the_id_is_refused(fleet, raw):
    iid, other = make_issue(raw, fleet), new_id()
    before = entry(raw, "fleet_issues", iid)
    with pytest.raises(OSError) as e:
        os.rename(fleet.path("issues", f"{iid}.yml"), fleet.path("issues", f"{other}.yml"))
    assert e.value.errno == errno.EINVAL
    assert entry(raw, "fleet_issues", iid) == before and entry(raw, "fleet_issues", other) is None
    assert sorted(n for n in os.listdir(fleet.path("issues")) if n in (f"{iid}.yml", f"{other}.yml")) \
        == [f"{iid}.yml"]
    assert any(x["op"] == "rename" and x["path"] == f"/issues/{iid}.yml"
               and f"id {iid} does not match the file name {other}" in x["reason"] for x in error_lines(fleet))


def test_refusal_reason_clears_when_the_value_changes(fleet, fleet2, raw):
    iid = make_issue(raw, fleet)
    p = fleet.path("issues", f"{iid}.yml")
    assert write_errno(p, b"title: x\nbogus: 1\n", os.O_WRONLY | os.O_TRUNC) == ("close", errno.EINVAL)
    assert "bogus: Extra inputs are not permitted" in xattr(p, "user.hvfs.error")
    p2 = fleet2.path("issues", f"{iid}.yml")
    with pytest.raises(OSError) as e:  # the reason is the refusing mount's
        os.getxattr(p2, "user.hvfs.error")
    assert e.value.errno == errno.ENODATA
    p2.write_bytes(b"title: fixed elsewhere\n")
    rev = entry(raw, "fleet_issues", iid)
    assert rev is not None
    wait_for(lambda: int(xattr(p, "user.hvfs.revision")) == rev[0], what="the new value on fleet")
    with pytest.raises(OSError) as e:
        os.getxattr(p, "user.hvfs.error")
    assert e.value.errno == errno.ENODATA


def test_touch_of_a_new_typed_file_is_an_empty_value_with_a_reason(fleet, raw):
    iid = new_id()
    sh(f"touch issues/{iid}.yml", cwd=fleet.mountpoint)
    assert raw.value("fleet_issues", iid) == b""
    p = fleet.path("issues", f"{iid}.yml")
    assert p.read_bytes() == b"" and xattr(p, "user.hvfs.error").startswith("empty value")
    p.write_bytes(b"title: filled in\n")
    assert json.loads(raw.value("fleet_issues", iid))["title"] == "filled in"
    with pytest.raises(OSError) as e:
        os.getxattr(p, "user.hvfs.error")
    assert e.value.errno == errno.ENODATA


# -- 5. stored values that do not validate ---------------------------------------------------


@pytest.mark.parametrize("value,why", [
    (b'{"id":"%s","title":"bad","priority":9}', "stored value: priority: Input should be less than or equal to 4"),
    (b"not json at all", "stored value: line 1, column 1: Expecting value"),
], ids=["schema", "not-json"])
def test_stored_value_that_does_not_validate_is_shown_raw(fleet, raw, value, why):
    iid = new_id()
    if b"%s" in value:
        value = value % iid.encode()
    raw.put("fleet_issues", iid, value)
    p = fleet.path("issues", f"{iid}.yml")
    wait_for(p.exists, what=f"{p}")
    r = subprocess.run(["cat", str(p)], capture_output=True)
    assert r.returncode == 0 and r.stdout == value
    assert os.stat(p).st_size == len(value)
    assert xattr(p, "user.hvfs.error") == why


# -- 6. TTL ---------------------------------------------------------------------------------


def test_expiry_leaves_both_mounts_and_wakes_inotify(tt, raw):
    a, b = tt
    name = new_id("ag")
    pa, pb = a.path("presence", f"{name}.yml"), b.path("presence", f"{name}.yml")
    w = Inotify(b.path("presence"))
    try:
        pa.write_bytes(b"status: working\n")
        w.wait("CREATE", pb)
        assert f"{name}.yml" in os.listdir(b.path("presence"))
        rev = history(raw, "tt_presence", name)[-1]
        assert rev.operation is None and json.loads(rev.value)["status"] == "working"
        expiry = rev.created.timestamp() + TTL
        w.wait("DELETE", pb, timeout=TTL + 4)
        latency = time.time() - expiry
        print(f"\nTTL expiry -> IN_DELETE on the other mount: {latency * 1000:.0f} ms")
        assert -0.05 < latency < 1.5, latency
        assert f"{name}.yml" not in os.listdir(b.path("presence"))
        wait_for(lambda: f"{name}.yml" not in os.listdir(a.path("presence")), what=f"{pa} gone from ls")
        assert not pa.exists() and has_no_value(raw, "tt_presence", name)
    finally:
        w.stop()


def test_touch_is_a_heartbeat(tt, raw):
    a, b = tt
    name = new_id("ag")
    pa, pb = a.path("presence", f"{name}.yml"), b.path("presence", f"{name}.yml")
    w = Inotify(b.path("presence"))
    try:
        pa.write_bytes(b"status: working\n")
        first = history(raw, "tt_presence", name)[-1]
        expires = xattr(pa, "user.hvfs.expires")
        sleep_until(first.created.timestamp() + 1.3)
        sh(f"touch presence/{name}.yml", cwd=a.mountpoint)
        second = history(raw, "tt_presence", name)[-1]
        assert second.revision > first.revision and second.value == first.value
        assert last_msg(raw, "tt_presence", name).headers["Nats-TTL"] == str(TTL)
        assert xattr(pa, "user.hvfs.expires") > expires  # ISO 8601 UTC: text order is time order
        wait_for(lambda: pb.exists() and int(xattr(pb, "user.hvfs.revision")) == second.revision,
                 what="the touch on the other mount")
        # Past the first TTL (and the marker's delivery) the file is still there: the touch refreshed it.
        sleep_until(first.created.timestamp() + TTL + 0.6)
        assert time.time() < second.created.timestamp() + TTL - 0.2, "too slow to tell the two TTLs apart"
        assert pa.exists() and pb.exists() and not has_no_value(raw, "tt_presence", name)
        assert "DELETE" not in w.of(pb)
        w.wait("DELETE", pb, timeout=TTL + 4)  # and it ends by the second TTL
    finally:
        w.stop()


def test_ttl_attributes_and_setfattr(tt, raw):
    a, b = tt
    name = new_id("ag")
    pa, pb = a.path("presence", f"{name}.yml"), b.path("presence", f"{name}.yml")
    pa.write_bytes(b"status: ready\n")
    assert sh(f"getfattr --only-values -n user.hvfs.ttl presence/{name}.yml", cwd=a.mountpoint).stdout == "2"
    created = history(raw, "tt_presence", name)[-1].created
    expires = xattr(pa, "user.hvfs.expires")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", expires)
    end = created.timestamp() + TTL  # the revision's time plus its TTL, to the millisecond
    want = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(end)))
    assert expires[:19] == want and abs(float("0" + expires[19:-1]) - (end - int(end))) < 0.002
    before = entry(raw, "tt_presence", name)
    assert before is not None
    assert last_msg(raw, "tt_presence", name).headers["Nats-TTL"] == "2"
    sh(f"setfattr -n user.hvfs.ttl -v 5 presence/{name}.yml", cwd=a.mountpoint)
    msg = last_msg(raw, "tt_presence", name)
    assert msg.headers["Nats-TTL"] == "5" and msg.headers["Hvfs-Writer"] == "tt-a"
    after = entry(raw, "tt_presence", name)
    assert after is not None and after[0] > before[0] and after[1] == before[1]  # same value, new revision
    assert xattr(pa, "user.hvfs.ttl") == "5"
    wait_for(lambda: pb.exists() and xattr(pb, "user.hvfs.ttl") == "5", what="ttl 5 on the other mount")
    os.unlink(pa)


def test_reading_does_not_refresh_the_ttl(tt, raw):
    a, b = tt
    name = new_id("ag")
    pa, pb = a.path("presence", f"{name}.yml"), b.path("presence", f"{name}.yml")
    pa.write_bytes(b"status: ready\n")
    before = entry(raw, "tt_presence", name)
    assert before is not None
    expires = xattr(pa, "user.hvfs.expires")
    wait_for(pb.exists, what=f"{pb}")
    for m in (a, b):
        sh(f"cat presence/{name}.yml; head -c 5 presence/{name}.yml; stat presence/{name}.yml",
           cwd=m.mountpoint)
    assert entry(raw, "tt_presence", name) == before
    assert len(history(raw, "tt_presence", name)) == 1
    assert xattr(pa, "user.hvfs.expires") == expires == xattr(pb, "user.hvfs.expires")
    os.unlink(pa)


# -- 7. writer identity ----------------------------------------------------------------------


def test_writer_of_a_mount_write_shows_on_the_other_mount(fleet, fleet2, raw):
    iid = new_id()
    fleet.path("issues", f"{iid}.yml").write_bytes(b"title: mine\n")
    assert last_msg(raw, "fleet_issues", iid).headers["Hvfs-Writer"] == "ag-7"
    p2 = fleet2.path("issues", f"{iid}.yml")
    wait_for(p2.exists, what=f"{p2}")
    assert sh(f"getfattr --only-values -n user.hvfs.writer issues/{iid}.yml",
              cwd=fleet2.mountpoint).stdout == "ag-7"
    # fleet2 rewrites it: now fleet sees ag-9.
    p2.write_bytes(b"title: theirs\n")
    assert last_msg(raw, "fleet_issues", iid).headers["Hvfs-Writer"] == "ag-9"
    wait_for(lambda: xattr(fleet.path("issues", f"{iid}.yml"), "user.hvfs.writer") == "ag-9",
             what="ag-9 on fleet")


def test_writer_header_of_another_client_shows(fleet, raw):
    iid = new_id()
    raw.run(raw.js.publish(f"$KV.fleet_issues.{iid}", json.dumps({"id": iid, "title": "by a bot"}).encode(),
                           headers={"Hvfs-Writer": "ops-bot"}))
    p = fleet.path("issues", f"{iid}.yml")
    wait_for(p.exists, what=f"{p}")
    assert xattr(p, "user.hvfs.writer") == "ops-bot"
    # A put without the header: no writer.
    raw.put("fleet_issues", iid, json.dumps({"id": iid, "title": "anonymous"}).encode())
    wait_for(lambda: b"anonymous" in p.read_bytes(), what="the anonymous put")
    with pytest.raises(OSError) as e:
        os.getxattr(p, "user.hvfs.writer")
    assert e.value.errno == errno.ENODATA


# -- 8. the stream binding: threads -----------------------------------------------------------


def messages(d: Path) -> list[str]:
    return sorted((n for n in os.listdir(d) if n.isdigit()), key=int)


def test_thread_post_is_one_json_line_on_both_mounts(fleet, fleet2, raw):
    iid = new_id()
    fleet.path("issues", f"{iid}.yml").write_bytes(b"title: discussed\n")
    sh(f'mkdir -p threads/{iid} && echo "body: hi" > threads/{iid}/new', cwd=fleet.mountpoint)
    d = fleet.path("threads", iid)
    assert "new" not in os.listdir(d)
    (seq,) = messages(d)
    d2 = fleet2.path("threads", iid)
    wait_for(lambda: d2.is_dir() and messages(d2) == [seq], what=f"message {seq} on fleet2")
    for m in (fleet, fleet2):
        body = m.path("threads", iid, seq).read_bytes()
        assert body.endswith(b"\n") and body.count(b"\n") == 1
        doc = json.loads(body)
        assert doc["type"] == "cm" and doc["author"] == "ag-7" and doc["issue_id"] == iid and doc["body"] == "hi"
        assert list(doc) == [f for f in SCHEMAS["comment"].model_fields]
        assert m.path("threads", iid, ".log").read_bytes() == body
        assert xattr(m.path("threads", iid, seq), "user.hvfs.writer") == "ag-7"
    msg = raw.run(raw.js.get_last_msg("fleet_threads", f"threads.{iid}"))
    assert msg.headers["Hvfs-Writer"] == "ag-7" and msg.data == body


def test_thread_post_for_a_missing_issue_is_refused(fleet, raw):
    missing = new_id()
    d = fleet.path("threads", missing)
    d.mkdir()
    assert write_errno(d / "new", b"body: hello?\n") == ("close", errno.EINVAL)
    with pytest.raises(nats.js.errors.NotFoundError):
        raw.run(raw.js.get_last_msg("fleet_threads", f"threads.{missing}"))
    assert messages(d) == []
    errs = [e for e in error_lines(fleet) if e["path"] == f"/threads/{missing}/new"]
    assert errs and f"issue_id: {missing} does not exist" in errs[-1]["reason"]


def test_refused_thread_post_leaves_no_file(fleet, raw):
    missing = new_id()
    d = fleet.path("threads", missing)
    d.mkdir()
    assert write_errno(d / "new", b"body: hello?\n") == ("close", errno.EINVAL)
    assert os.listdir(d) == []


# -- 9. claims: exactly one winner across mounts ------------------------------------------------


def test_claim_race_has_exactly_one_winner(fleet, fleet2, raw):
    iid = make_issue(raw, fleet, fleet2)
    for m in (fleet, fleet2):
        m.path("claims", iid).mkdir()
    procs = []
    for n in range(8):
        m = (fleet, fleet2)[n % 2]
        procs.append(subprocess.Popen(
            ["bash", "-c", f'set -o noclobber; echo "agent_id: ag-{n}" > claims/{iid}/owner.yml'],
            cwd=m.mountpoint, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=20)
        results.append((p.returncode, err))
    winners = [n for n, (rc, _) in enumerate(results) if rc == 0]
    assert len(winners) == 1, results
    for n, (rc, err) in enumerate(results):
        if n != winners[0]:
            assert rc == 1 and "cannot overwrite existing file" in err, (n, rc, err)
    doc = json.loads(raw.value("fleet_claims", f"{iid}.owner"))
    assert doc["agent_id"] == f"ag-{winners[0]}" and doc["issue_id"] == iid and doc["type"] == "cl"
    assert last_msg(raw, "fleet_claims", f"{iid}.owner").headers["Hvfs-Writer"] == \
        ("ag-7", "ag-9")[winners[0] % 2]
    for m in (fleet, fleet2):
        p = m.path("claims", iid, "owner.yml")
        wait_for(lambda p=p: p.exists() and yaml.safe_load(p.read_bytes()) == doc, what=f"the claim on {p}")


# -- 10. config errors stop the mount ---------------------------------------------------------


def mount_fails(server: EmbeddedServer, tmp_path: Path, config: str) -> str:
    """``hvfs mount`` with ``config``: assert it exits non-zero having mounted nothing; its stderr."""
    cfg = tmp_path / "bad.yml"
    cfg.write_text(config)
    mp = tmp_path / "mp"
    mp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "hvfs", "mount", str(mp), "--server", server.url,
                             "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if is_mounted(mp):
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], check=False)
            pytest.fail("the mount started")
    assert proc.returncode != 0, (out, err)
    assert not is_mounted(mp) and os.listdir(mp) == []
    return err


def bucket_exists(raw: RawNats, bucket: str) -> bool:
    try:
        raw.run(raw.js.stream_info(f"KV_{bucket}"))
    except nats.js.errors.NotFoundError:
        return False
    return True


def test_config_error_names_file_line_and_field(server, raw, tmp_path):
    err = mount_fails(server, tmp_path, """\
bindings:
  - path: agents
    kv: tt_badcfg
    format: yaml
    schema: agent
    ttl: 0
""")
    assert f"hvfs: config {tmp_path / 'bad.yml'}:6: bindings[0].ttl: Input should be greater than or equal to 1" \
        in err, err
    assert not bucket_exists(raw, "tt_badcfg")


@pytest.mark.parametrize("make", ["stream-without-msg-ttl", "kv-without-marker-ttl"])
def test_ttl_binding_on_a_bucket_without_per_message_ttl_refuses_to_start(server, raw, tmp_path, make):
    bucket = f"tt_nottl_{make.split('-')[0]}"
    if make == "stream-without-msg-ttl":
        from nats.js.api import DiscardPolicy

        add_stream(raw, f"KV_{bucket}", [f"$KV.{bucket}.>"], max_msgs_per_subject=1, allow_rollup_hdrs=True,
                   deny_delete=True, allow_direct=True, discard=DiscardPolicy.NEW, allow_msg_ttl=False)
        why = "it does not allow per-message TTL (the binding has ttl 5)"
    else:
        raw.create_bucket(bucket, history=1)
        why = "it has no limit marker TTL, so other mounts would not see keys expire"
    err = mount_fails(server, tmp_path, f"""\
bindings:
  - path: agents
    kv: {bucket}
    format: yaml
    schema: agent
    ttl: 5
""")
    assert f"binding agents: KV bucket {bucket} exists with other settings" in err, err
    assert why in err, err


def test_explicit_history_differing_from_the_bucket_refuses_to_start(server, raw, tmp_path):
    raw.create_bucket("tt_hist", history=5)
    err = mount_fails(server, tmp_path, """\
bindings:
  - path: things
    kv: tt_hist
    history: 7
""")
    assert "binding things: KV bucket tt_hist exists with other settings: history is 5, the binding says 7" \
        in err, err


# -- 11. _meta/ ------------------------------------------------------------------------------


def test_meta_daemon_yml_and_schemas(fleet):
    daemon = yaml.safe_load(fleet.path("_meta", "daemon.yml").read_bytes())
    assert daemon["writer"] == "ag-7" and daemon["connected"] is True and daemon["msg_ttl"] is True
    assert {b["path"] for b in daemon["bindings"]} >= {"agents", "claims", "issues", "threads", "work"}
    version = yaml.safe_load(fleet.path("_meta", "schema-version.yml").read_bytes())
    assert version["schema_version"] == "1" and version["schemas"] == sorted(SCHEMAS)
    assert sorted(os.listdir(fleet.path("_meta", "schemas"))) == sorted(f"{n}.json" for n in SCHEMAS)
    raw_schema = fleet.path("_meta", "schemas", "claim.json").read_bytes()
    assert raw_schema == json_schema(Claim)
    # A JSON Schema (jsonschema is not installed: checked by hand): an object schema whose
    # properties are the model's fields, the required ones required, no others allowed.
    schema = json.loads(raw_schema)
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert list(schema["properties"]) == list(Claim.model_fields)
    assert set(schema["required"]) == {"issue_id", "agent_id"}
    assert re.compile(schema["properties"]["id"]["pattern"]).match("cl-abc")
    for spec in schema["properties"].values():
        assert spec.keys() & {"type", "anyOf", "$ref", "const", "enum", "format"}, spec


def test_meta_is_read_only(fleet):
    f = fleet.path("_meta", "daemon.yml")
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o444
    assert write_errno(f, b"x", os.O_WRONLY | os.O_TRUNC) == ("open", errno.EPERM)
    assert write_errno(fleet.path("_meta", "mine.yml"), b"x") == ("open", errno.EPERM)
    with pytest.raises(OSError) as e:
        os.unlink(f)
    assert e.value.errno == errno.EPERM
    assert yaml.safe_load(f.read_bytes())["writer"] == "ag-7"


# -- 12. read_only bindings ------------------------------------------------------------------


def test_read_only_binding_refuses_writes_with_erofs(tt, raw):
    a, _ = tt
    raw.put("tt_ro", "is-1", json.dumps({"type": "is", "id": "is-1", "title": "frozen"}).encode())
    p = a.path("ro", "is-1.yml")
    wait_for(p.exists, what=f"{p}")
    before = entry(raw, "tt_ro", "is-1")
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o444
    assert write_errno(p, b"title: thawed\n", os.O_WRONLY | os.O_TRUNC) == ("open", errno.EROFS)
    assert write_errno(a.path("ro", "is-2.yml"), b"title: new\n") == ("open", errno.EROFS)
    r = sh("echo 'title: thawed' > ro/is-1.yml", cwd=a.mountpoint, check=False)
    assert r.returncode != 0 and "Read-only file system" in r.stderr
    with pytest.raises(OSError) as e:
        os.unlink(p)
    assert e.value.errno == errno.EROFS
    assert entry(raw, "tt_ro", "is-1") == before and entry(raw, "tt_ro", "is-2") is None
    assert b"title: frozen" in p.read_bytes()


# -- a project's own model (schema: module:Class), in a json binding ------------------------------


def test_project_model_in_a_json_binding(tt, raw):
    a, b = tt
    p = a.path("notes", "n-1.json")
    p.write_bytes(b'{"text": "hello", "tags": ["x"]}')
    assert raw.value("tt_notes", "n-1") == b'{"id":"n-1","author":"tt-a","text":"hello","tags":["x"]}'
    pb = b.path("notes", "n-1.json")
    wait_for(pb.exists, what=f"{pb}")
    shown = json.dumps({"id": "n-1", "author": "tt-a", "text": "hello", "tags": ["x"]}, indent=2) + "\n"
    assert pb.read_text() == shown
    assert_refused(a, raw, p, "tt_notes", "n-1", b'{"text": ""}', "text: String should have at least 1 character")
    assert_refused(a, raw, p, "tt_notes", "n-1", b"text: yaml is not json\n", "line 1, column 1")


# -- 13. status ------------------------------------------------------------------------------


def test_status_shows_writer_and_msg_ttl(fleet):
    r = subprocess.run([sys.executable, "-m", "hvfs", "status", str(fleet.mountpoint)],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["writer"] == "ag-7" and doc["msg_ttl"] is True and doc["ttl_notes"] == [] and doc["connected"]
    ctl = json.loads(fleet.path(".hvfs", "status").read_text())
    assert ctl["writer"] == "ag-7" and ctl["msg_ttl"] is True
    modes = {b["path"]: b.get("ttl_mode") for b in doc["bindings"] if "kv" in b}
    assert modes["agents"] == modes["claims"] == "per-message" and modes["issues"] is None
