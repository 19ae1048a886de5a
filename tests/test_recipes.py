"""docs/recipes.md, line by line, on two mounts of examples/fleet.yml (``fleet`` = ag-7, ``fleet2`` = ag-9).

Every shell line of the recipes is copied here literally and run with
``bash -c`` from the mount root; ``test_every_recipe_line_is_run`` parses the
doc's ```sh blocks so that the doc and these tests cannot drift apart. Two
lines run forever by design; they are run bounded, derived from the literal
line: the heartbeat loop with ``sleep 0.4`` instead of ``sleep 10`` under
``timeout 1.3`` (three touches), and ``tail -f`` under ``timeout 10``, stopped
once it has shown the post it follows.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest
import yaml

from .helpers import Mount, RawNats, history, publish, wait_for

DOC = Path(__file__).resolve().parent.parent / "docs" / "recipes.md"

# The recipes, as docs/recipes.md has them.
OPEN_ISSUE = r"printf 'title: Fix the login page\npriority: 1\n' > issues/is-42.yml"
PRESENCE = r"printf 'status: working\ncurrent_issue: is-42\n' > agents/ag-7.yml"
HEARTBEAT = "while sleep 10; do touch agents/ag-7.yml; done"
READ_PEER = "ls agents/ && cat agents/ag-9.yml && getfattr --only-values -n user.hvfs.expires agents/ag-9.yml"
CLAIM = ('mkdir -p claims/is-42 && (set -o noclobber; echo "agent_id: ag-7" > claims/is-42/owner.yml)'
         " && echo claimed")
RELEASE = "grep -q '^agent_id: ag-7$' claims/is-42/owner.yml && rm claims/is-42/owner.yml"
TAKE_WORK = 'f=$(ls work | head -n 1) && cat "work/$f" && rm "work/$f"'
POST = 'mkdir -p threads/is-42 && echo "body: the fix is in review" > threads/is-42/new'
FOLLOW = "tail -f threads/is-42/.log"
WHO_WROTE = "getfattr --only-values -n user.hvfs.writer claims/is-42/owner.yml"
WHY_REFUSED = "getfattr --only-values -n user.hvfs.error agents/ag-7.yml; echo; tail -n 3 .hvfs/errors"

RECIPES = [OPEN_ISSUE, PRESENCE, HEARTBEAT, READ_PEER, CLAIM, RELEASE, TAKE_WORK, POST, FOLLOW,
           WHO_WROTE, WHY_REFUSED]

# The two long-running lines, bounded (see the module's docstring).
HEARTBEAT_BOUNDED = f"timeout 1.3 bash -c {shlex.quote(HEARTBEAT.replace('sleep 10', 'sleep 0.4'))}"
FOLLOW_BOUNDED = f"timeout 10 {FOLLOW}"


def sh(script: str, m: Mount, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with bash from the root of ``m``."""
    p = subprocess.run(["bash", "-c", script], cwd=m.mountpoint, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"bash -c {script!r} on {m.writer} exited {p.returncode}\n"
                             f"stdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def xattr(path: Path, name: str) -> str:
    return os.getxattr(path, name).decode()


def last_msg(raw: RawNats, bucket: str, key: str) -> Any:
    return raw.run(raw.js.get_last_msg(f"KV_{bucket}", f"$KV.{bucket}.{key}"))


def has_no_value(raw: RawNats, bucket: str, key: str) -> bool:
    try:
        h = last_msg(raw, bucket, key).headers or {}
    except nats.js.errors.NotFoundError:
        return True
    return h.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in h


# -- the doc and the tests agree -------------------------------------------------------------


def doc_lines() -> list[str]:
    blocks = re.findall(r"^```sh\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)
    return [line.strip() for b in blocks for line in b.splitlines() if line.strip()]


def test_every_recipe_line_is_run():
    lines = doc_lines()
    assert lines, f"no ```sh blocks in {DOC}"
    assert [x for x in lines if x not in RECIPES] == [], "lines of docs/recipes.md no test runs"
    assert [x for x in RECIPES if x not in lines] == [], "lines the tests run that docs/recipes.md lost"


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issue42(fleet: Mount, fleet2: Mount) -> str:
    """is-42 exists (a claim and a post need it): the first recipe, once per module."""
    sh(OPEN_ISSUE, fleet)
    wait_for(fleet2.path("issues", "is-42.yml").exists, what="is-42 on fleet2")
    return "is-42"


@pytest.fixture
def no_claim(issue42: str, fleet: Mount, fleet2: Mount, raw: RawNats) -> Iterator[None]:
    """is-42 is unclaimed before and after the test."""

    def clear() -> None:
        if not has_no_value(raw, "fleet_claims", "is-42.owner"):
            raw.delete("fleet_claims", "is-42.owner")
        for m in (fleet, fleet2):
            p = m.path("claims", "is-42", "owner.yml")
            wait_for(lambda: not p.exists(), what=f"{p} gone")  # noqa: B023 - called at once

    clear()
    yield
    clear()


# -- the recipes --------------------------------------------------------------------------------


def test_open_an_issue(fleet, fleet2, raw):
    sh(OPEN_ISSUE, fleet)
    doc = json.loads(raw.value("fleet_issues", "is-42"))
    assert doc["type"] == "is" and doc["id"] == "is-42" and doc["status"] == "open"
    assert doc["title"] == "Fix the login page" and doc["priority"] == 1
    assert doc["created_at"].endswith("Z") and doc["updated_at"].endswith("Z")
    p2 = fleet2.path("issues", "is-42.yml")
    wait_for(lambda: p2.exists() and yaml.safe_load(p2.read_bytes()) == doc, what="is-42 as written on fleet2")


def test_presence_and_heartbeat(fleet, fleet2, raw):
    sh(PRESENCE, fleet)
    first = history(raw, "fleet_agents", "ag-7")[-1]
    doc = json.loads(first.value)
    assert doc["id"] == "ag-7" and doc["status"] == "working" and doc["current_issue"] == "is-42"
    msg = last_msg(raw, "fleet_agents", "ag-7")
    assert msg.headers["Nats-TTL"] == "30" and msg.headers["Hvfs-Writer"] == "ag-7"
    p = fleet.path("agents", "ag-7.yml")
    expires = xattr(p, "user.hvfs.expires")
    r = sh(HEARTBEAT_BOUNDED, fleet, check=False)
    assert r.returncode == 124 and r.stderr == "", r  # stopped by timeout, every touch succeeded
    last = history(raw, "fleet_agents", "ag-7")[-1]  # history 1: the newest revision only
    # Each touch is a new revision of the same value, with the binding's TTL from then on.
    assert last.revision > first.revision and last.created > first.created, (first, last)
    assert last.value == first.value
    assert last_msg(raw, "fleet_agents", "ag-7").headers["Nats-TTL"] == "30"
    assert xattr(p, "user.hvfs.expires") >= expires  # whole seconds: later, or the same second
    p2 = fleet2.path("agents", "ag-7.yml")
    wait_for(lambda: p2.exists() and int(xattr(p2, "user.hvfs.revision")) == last.revision,
             what="the heartbeat on fleet2")
    assert xattr(p2, "user.hvfs.ttl") == "30"


def test_read_a_peers_presence(fleet, fleet2):
    sh(PRESENCE.replace("ag-7", "ag-9"), fleet2)  # ag-9 says it is here, on its own mount
    wait_for(fleet.path("agents", "ag-9.yml").exists, what="ag-9 on fleet")
    out = sh(READ_PEER, fleet).stdout
    assert "ag-9.yml" in out.splitlines()  # ls agents/
    assert "id: ag-9" in out.splitlines() and "status: working" in out.splitlines()  # cat
    expires = out.rstrip("\n").splitlines()[-1]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", expires), out
    assert expires == xattr(fleet2.path("agents", "ag-9.yml"), "user.hvfs.expires")


def test_claim_exactly_one_agent_wins(fleet, fleet2, raw, no_claim):
    won = sh(CLAIM, fleet)
    assert won.stdout == "claimed\n"
    lost = sh(CLAIM, fleet2, check=False)
    assert lost.returncode == 1 and lost.stdout == "" and "cannot overwrite existing file" in lost.stderr, lost
    doc = json.loads(raw.value("fleet_claims", "is-42.owner"))
    assert doc["agent_id"] == "ag-7" and doc["issue_id"] == "is-42" and doc["claim_type"] == "working"
    msg = last_msg(raw, "fleet_claims", "is-42.owner")
    assert msg.headers["Hvfs-Writer"] == "ag-7" and msg.headers["Nats-TTL"] == "300"


def test_who_wrote_what(fleet, fleet2, no_claim):
    sh(CLAIM, fleet)
    wait_for(fleet2.path("claims", "is-42", "owner.yml").exists, what="the claim on fleet2")
    assert sh(WHO_WROTE, fleet2).stdout == "ag-7"
    assert sh(WHO_WROTE, fleet).stdout == "ag-7"


def test_release_a_claim(fleet, fleet2, raw, no_claim):
    sh(CLAIM, fleet)
    p2 = fleet2.path("claims", "is-42", "owner.yml")
    wait_for(p2.exists, what="the claim on fleet2")
    sh(RELEASE, fleet)
    assert has_no_value(raw, "fleet_claims", "is-42.owner")
    assert last_msg(raw, "fleet_claims", "is-42.owner").headers["Hvfs-Writer"] == "ag-7"  # the delete's
    assert not fleet.path("claims", "is-42", "owner.yml").exists()
    wait_for(lambda: not p2.exists(), what="the release on fleet2")
    assert sh(RELEASE, fleet2, check=False).returncode != 0  # nothing left to release
    # Someone else's claim is not released.
    sh('mkdir -p claims/is-42 && (set -o noclobber; echo "agent_id: ag-9" > claims/is-42/owner.yml)', fleet2)
    wait_for(fleet.path("claims", "is-42", "owner.yml").exists, what="ag-9's claim on fleet")
    assert sh(RELEASE, fleet, check=False).returncode == 1
    assert json.loads(raw.value("fleet_claims", "is-42.owner"))["agent_id"] == "ag-9"


def test_take_work_from_the_queue(fleet, fleet2, raw):
    jobs = {f"job {n} {time.time_ns()}\n" for n in (1, 2)}
    for job in sorted(jobs):
        publish(raw, "work.x", job.encode())
    taken: list[tuple[str, str]] = []

    def take() -> bool:
        for m in (fleet, fleet2):
            r = sh(TAKE_WORK, m, check=False)
            if r.returncode == 0:
                taken.append((m.writer, r.stdout))
        return len(taken) >= len(jobs)

    wait_for(take, timeout=10, what=f"both jobs taken (taken: {taken})")
    assert sorted(job for _, job in taken) == sorted(jobs), taken  # each once
    for m in (fleet, fleet2):
        assert sh(TAKE_WORK, m, check=False).returncode != 0  # nothing left
        assert os.listdir(m.path("work")) == []
    info = raw.run(raw.js.consumer_info("fleet_work", "workers"))
    assert info.num_ack_pending == 0 and info.num_pending == 0, info


def test_post_to_a_thread_and_follow_it(fleet, fleet2, issue42):
    os.makedirs(fleet2.path("threads", "is-42"), exist_ok=True)  # the follower's directory
    follower = subprocess.Popen(["bash", "-c", FOLLOW_BOUNDED], cwd=fleet2.mountpoint,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read() -> None:
        assert follower.stdout is not None
        for line in follower.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        sh(POST, fleet)
        line = wait_for(lambda: next((x for x in list(lines) if "the fix is in review" in x), None),
                        timeout=8, what=f"the post in the follower's tail -f (has {lines})")
        doc = json.loads(line)
        assert doc["author"] == "ag-7" and doc["issue_id"] == "is-42" and doc["body"] == "the fix is in review"
        assert follower.poll() is None, "tail -f stopped following"
    finally:
        follower.terminate()
        follower.wait(5)
        reader.join(5)
    log = fleet.path("threads", "is-42", ".log").read_text()
    assert line in log.splitlines(keepends=True)


def test_find_out_why_a_write_was_refused(fleet, raw):
    sh(PRESENCE, fleet)
    before = raw.value("fleet_agents", "ag-7")
    r = sh('echo "status: sleeping" > agents/ag-7.yml', fleet, check=False)
    assert r.returncode == 0  # a shell does not report the refused close: the recipe does
    assert raw.value("fleet_agents", "ag-7") == before
    out = sh(WHY_REFUSED, fleet).stdout
    # getfattr --only-values ends the value without a newline: the errors follow on its line.
    cut = out.index('{"time"')
    reason, errors = out[:cut], out[cut:].splitlines()
    assert reason.startswith("status: Input should be 'starting', 'ready', 'working', 'paused' or 'stopping'")
    assert "your bytes are in .hvfs/conflicts/" in reason
    assert 1 <= len(errors) <= 3
    last = json.loads(errors[-1])
    assert last["path"] == "/agents/ag-7.yml" and last["errno"] == errno.EINVAL and last["op"] == "flush"
