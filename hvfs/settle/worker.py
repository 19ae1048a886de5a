"""Settlement and restore: NATS state (through the Store) folded into git commits, and back.

A settlement reads, for each settled bucket and stream, only what changed
since the revisions its branch's last commit records (its trailers), folds
that into the commit's tree and commits when the tree differs. The branch
moves by compare-and-set: when another settler moved it meanwhile, the
settlement is redone on top of the new commit. With a remote, the commit is
pushed first and the branch moves after; a refused push fetches the remote's
branch and redoes the settlement on top of it. Reading NATS is all a
settlement does to it.

Git work (rendering, trees, objects) runs in a worker thread: the mount's
trio loop keeps serving meanwhile.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import trio

from ..config import Binding, MountConfig, SettleConfig
from ..errors import Conflict, Exists, HvfsError, Invalid, NotFound
from ..store import KvDelta, KvEntry, Store, StreamDelta
from .git import Git, Head, ObjectID, PushResult, TreeEdit, conflict
from .tree import (
    Marks,
    Source,
    apply_overlays,
    digest_header,
    digest_last_seq,
    digest_section,
    file_key,
    kv_content,
    kv_file,
    msg_file,
    overlay_doc,
    overlay_issue,
    resolve,
    restore_value,
    thread_file,
)

__all__ = ["Outcome", "RestoreLine", "Settler", "restore"]

log = logging.getLogger(__name__)

_SUMMARY_RE = re.compile(rb"^(\d+) files? changed; ", re.M)

#: how often a settlement is redone when the branch moves under it (or a push is refused)
MAX_TRIES = 6


@dataclass
class Outcome:
    commit: str | None  # the new commit; None: nothing changed
    head: str | None  # the branch's commit after the settlement
    changed: int  # files added, changed or removed
    read: int  # keys and messages read from NATS
    seconds: float
    tries: int = 1
    pushed: str | None = None  # with a remote: PushResult
    note: str = ""


@dataclass
class _KvRead:
    sources: list[Source]
    full: bool  # the whole state: the sources' subtrees are replaced
    delta: KvDelta


@dataclass
class _StreamRead:
    sources: list[Source]
    delta: StreamDelta


@dataclass
class _Reads:
    marks: Marks
    kv: list[_KvRead] = field(default_factory=list)
    streams: list[_StreamRead] = field(default_factory=list)
    #: issues source path -> issue key -> its overlays' fields, in key order
    overlays: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    #: issues source path -> issue key -> value (None: gone), re-rendered for an overlay's change
    issues: dict[str, dict[str, bytes | None]] = field(default_factory=dict)
    count: int = 0


@dataclass
class _OverlayCache:
    revision: int
    by_issue: dict[str, dict[str, dict[str, Any]]]  # issue key -> overlay key -> fields


class Settler:
    """Settles the config's chosen paths into ``settle.repo``; one settlement at a time."""

    def __init__(self, store: Store, config: MountConfig, settle: SettleConfig, only: Iterable[str] = ()) -> None:
        if settle.repo is None:
            raise Invalid("settle: no repository (settle.repo in the config, or --repo)")
        self.store = store
        self.config = config
        self.cfg = settle
        self.repo = settle.repo
        self.sources = resolve(config, settle, only)
        if not self.sources:
            raise Invalid("settle: nothing to settle (no KV or stream binding, or every path is never)")
        self._lock = trio.Lock()
        self._overlays: dict[str, _OverlayCache] = {}
        self.runs = 0
        self.last: dict[str, Any] | None = None
        self._seen: tuple[bytes, dict[str, Any]] | None = None  # the branch head status() read

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """For ``.hvfs/status``: where it settles, and the last settlement (or its error).

        Before this process has settled, the last settlement is the branch's commit
        (made by ``hvfs settle`` or another settler), read from the repository.
        """
        return {
            "repo": self.repo, "branch": self.cfg.branch, "dir": self.cfg.dir, "remote": self.cfg.remote,
            "interval": self.cfg.interval, "paths": {s.path: s.policy for s in self.sources},
            "runs": self.runs, "last": self.last if self.last is not None else self._branch_head(),
        }

    def _branch_head(self) -> dict[str, Any] | None:
        try:
            with Git.open(self.repo, self.cfg.branch) as git:
                sha = git.head_id()
                if sha is None:
                    return None
                if self._seen is not None and self._seen[0] == sha:
                    return self._seen[1]
                h = git.head(sha)
        except HvfsError as e:
            return {"commit": None, "error": e.reason}
        assert h is not None
        m = _SUMMARY_RE.search(h.message)
        doc = {"commit": sha.decode(), "head": sha.decode(),
               "time": datetime.fromtimestamp(h.time, UTC).isoformat().replace("+00:00", "Z"),
               "keys": int(m.group(1)) if m else None, "error": None, "by": "the repository's branch"}
        self._seen = (sha, doc)
        return doc

    def _record(self, out: Outcome | None, error: str | None, seconds: float) -> None:
        self.runs += 1
        prev = self.last or {}
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        self.last = {
            "time": now,
            "commit": out.commit if out else None,
            "head": out.head if out else prev.get("head"),
            "keys": out.changed if out else 0,
            "read": out.read if out else 0,
            "seconds": round(seconds, 3),
            "error": error,
        }
        if out is not None and out.note:
            self.last["note"] = out.note

    # -- the periodic settler ------------------------------------------------------------

    async def run(self, interval: float, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Settle every ``interval`` seconds until cancelled; failures are logged and in status."""
        task_status.started()
        while True:
            try:
                out = await self.settle()
                if out.commit:
                    log.info("settled %s: commit %s (%d files)", self.repo, out.commit, out.changed)
            except HvfsError as e:
                log.warning("settle %s: %s", self.repo, e.reason)
            except Exception:
                log.exception("settle %s failed", self.repo)
            await trio.sleep(interval)

    # -- one settlement ----------------------------------------------------------------

    async def settle(self) -> Outcome:
        t0 = time.monotonic()
        async with self._lock:
            try:
                out = await self._settle(t0)
            except HvfsError as e:
                self._record(None, e.reason, time.monotonic() - t0)
                raise
            except Exception as e:
                self._record(None, f"{type(e).__name__}: {e}", time.monotonic() - t0)
                raise
            self._record(out, None, out.seconds)
            return out

    async def _settle(self, t0: float) -> Outcome:
        cfg = self.cfg
        git = await trio.to_thread.run_sync(Git.open, self.repo, cfg.branch)
        try:
            await trio.to_thread.run_sync(git.check_unlocked)
            on_remote: ObjectID | None = None  # after a refused push: the remote's commit, built on
            note = ""
            for attempt in range(1, MAX_TRIES + 1):
                local = await trio.to_thread.run_sync(git.head_id)
                base_id = on_remote if on_remote is not None else local
                base = await trio.to_thread.run_sync(git.head, base_id) if base_id else None
                marks = Marks.parse(base.trailers) if base is not None else Marks()
                reads = await self._read(marks)
                new, changed = await trio.to_thread.run_sync(self._build, git, base, reads)
                tip = new or base_id
                pushed = None
                if cfg.remote is not None and tip is not None:
                    pushed = await trio.to_thread.run_sync(git.push, cfg.remote, tip)
                    if pushed == PushResult.REFUSED:
                        on_remote = await trio.to_thread.run_sync(git.fetch, cfg.remote)
                        continue
                if tip is not None and tip != local:
                    if cfg.remote is None:
                        if not await trio.to_thread.run_sync(git.move, local, tip, "hvfs settle"):
                            continue  # the branch moved: redo on top of it
                    else:
                        note = await trio.to_thread.run_sync(self._follow, git, tip)
                head = tip if tip is not None else None
                return Outcome(new.decode() if new else None, head.decode() if head else None, changed,
                               reads.count, time.monotonic() - t0, attempt, pushed, note)
            raise conflict(self.repo, cfg.branch, MAX_TRIES)
        finally:
            git.close()

    def _follow(self, git: Git, tip: ObjectID) -> str:
        """After a push: the local branch follows the remote's when it can fast-forward."""
        for _ in range(MAX_TRIES):
            cur = git.head_id()
            if cur == tip:
                return ""
            if cur is not None and not git.is_ancestor(cur, tip):
                return (f"the local branch {self.cfg.branch} has commits the remote has not; "
                        "left as it is (the remote holds the settlement)")
            if git.move(cur, tip, "hvfs settle: follow the remote"):
                return ""
        return f"the local branch {self.cfg.branch} kept moving; left as it is"

    # -- reading NATS ------------------------------------------------------------------

    async def _read(self, marks: Marks) -> _Reads:
        reads = _Reads(marks.copy())
        fresh = {s.path for s in self.sources if marks.paths.get(s.path) != (s.policy, s.fingerprint)}
        by_path = {s.path: s for s in self.sources}
        for s in self.sources:  # an overlay and its issues are made together
            if s.policy == "overlay" and (s.path in fresh or s.issues in fresh):
                fresh |= {s.path, s.issues or ""}
        groups: dict[tuple[str, str], list[Source]] = defaultdict(list)
        for s in self.sources:
            groups[(s.kind, s.name)].append(s)
        kv_reads: dict[str, _KvRead] = {}
        for (kind, name), srcs in groups.items():
            if kind == "kv":
                since = 0 if any(s.path in fresh for s in srcs) else marks.buckets.get(name, 0)
                delta = await self._kv_since(name, since, srcs)
                if not delta.complete and since:
                    since = 0
                    delta = await self._kv_since(name, 0, srcs)
                kr = _KvRead(srcs, since == 0, delta)
                reads.kv.append(kr)
                kv_reads[name] = kr
                reads.marks.buckets[name] = delta.last
                reads.count += len(delta.puts) + len(delta.deleted)
            else:
                since = 0 if any(s.path in fresh for s in srcs) else marks.streams.get(name, 0)
                subject = f"{srcs[0].prefix}.>" if len(srcs) == 1 and srcs[0].prefix else None
                try:
                    sd = await self.store.stream_since(name, since, subject)
                except NotFound:
                    raise NotFound(f"settle {srcs[0].path}: no stream {name!r} on this server (the mount "
                                   "creates it from the config; is this the right server?)") from None
                reads.streams.append(_StreamRead(srcs, sd))
                reads.marks.streams[name] = sd.last
                reads.count += len(sd.msgs)
        for s in self.sources:
            reads.marks.paths[s.path] = (s.policy, s.fingerprint)
        for s in self.sources:
            if s.policy == "overlay" and s.issues in by_path:
                await self._overlay(s, by_path[s.issues], kv_reads, marks, reads)
        return reads

    async def _kv_since(self, name: str, since: int, srcs: list[Source]) -> KvDelta:
        try:
            return await self.store.kv_since(name, since)
        except NotFound:
            raise NotFound(f"settle {srcs[0].path}: no KV bucket {name!r} on this server (the mount "
                           "creates it from the config; is this the right server?)") from None

    async def _overlay(self, ov: Source, issues: Source, kv_reads: dict[str, _KvRead], marks: Marks,
                       reads: _Reads) -> None:
        """The overlays of the issues a settlement renders, and the issues an overlay change re-renders."""
        okr, ikr = kv_reads[ov.name], kv_reads[issues.name]
        changed_ov = {k for k in (*okr.delta.puts, *okr.delta.deleted) if overlay_issue(ov, issues, k)}
        issue_changes = [k for k in ikr.delta.puts if kv_file(issues, k)]
        if not okr.full and not ikr.full and not changed_ov and not issue_changes:
            return
        cache = self._overlays.get(ov.path)
        if okr.full:
            cache = _OverlayCache(okr.delta.last, {})
            self._apply_overlays(ov, issues, cache, okr.delta.puts, {})
        elif cache is not None and marks.buckets.get(ov.name, cache.revision + 1) <= cache.revision:
            # The cache holds a state at or after the commit's revision: the delta since that
            # revision (each key's latest) brings it to the delta's end.
            self._apply_overlays(ov, issues, cache, okr.delta.puts, okr.delta.deleted)
            cache.revision = okr.delta.last
        else:  # no state held (a new settler) or another commit's: the whole current state
            whole = await self._kv_since(ov.name, 0, [ov])
            reads.count += len(whole.puts)
            cache = _OverlayCache(okr.delta.last, {})
            self._apply_overlays(ov, issues, cache, whole.puts, {})
        self._overlays[ov.path] = cache
        out = reads.overlays.setdefault(issues.path, {})
        for ik, ovs in cache.by_issue.items():
            out.setdefault(ik, []).extend(ovs[k] for k in sorted(ovs))
        if ikr.full:
            return
        affected = {overlay_issue(ov, issues, k) for k in changed_ov} - set(ikr.delta.puts) - set(ikr.delta.deleted)
        values = reads.issues.setdefault(issues.path, {})
        for ik in sorted(k for k in affected if k):
            try:
                values[ik] = (await self.store.get(issues.name, ik)).value
            except NotFound:
                values[ik] = None
            reads.count += 1

    @staticmethod
    def _apply_overlays(ov: Source, issues: Source, cache: _OverlayCache, puts: dict[str, KvEntry],
                        deleted: dict[str, int]) -> None:
        for k in [*puts, *deleted]:
            ik = overlay_issue(ov, issues, k)
            if ik is None:
                continue
            doc = overlay_doc(puts[k].value) if k in puts else None
            bucket = cache.by_issue.setdefault(ik, {})
            if doc is None:
                bucket.pop(k, None)
            else:
                bucket[k] = doc
            if not bucket:
                del cache.by_issue[ik]

    # -- folding into git (worker thread) ---------------------------------------------------

    def _build(self, git: Git, base: Head | None, reads: _Reads) -> tuple[ObjectID | None, int]:
        with git.reading():
            edit = git.edit(base)
            for kr in reads.kv:
                for src in kr.sources:
                    if src.policy == "full":
                        self._fold_kv(edit, src, kr, reads)
            for sr in reads.streams:
                for src in sr.sources:
                    self._fold_stream(edit, src, sr)
            tree = edit.write()
            if (base is not None and tree == base.tree) or (base is None and not edit.root.entries):
                return None, 0
            git.save(edit)
            n = git.changes(base.tree if base is not None else None, tree)
            summary = f"{n} file{'s' if n != 1 else ''} changed; {reads.count} keys and messages read"
            message = f"{self.cfg.message.rstrip()}\n\n{summary}"
            return git.commit(tree, base, self.cfg.author, message, reads.marks.trailers()), n

    def _fold_kv(self, edit: TreeEdit, src: Source, kr: _KvRead, reads: _Reads) -> None:
        codec = src.codec()
        model = src.binding.schema_model
        ovs = reads.overlays.get(src.path)

        def render(key: str, value: bytes) -> bytes:
            if ovs:
                value = apply_overlays(value, ovs.get(key, ()), model)
            return kv_content(codec, value)

        loc = src.location
        if kr.full:
            files: dict[tuple[bytes, ...], bytes] = {}
            for key, e in kr.delta.puts.items():
                parts = kv_file(src, key)
                if parts is not None:
                    files[parts] = render(key, e.value)
            edit.replace(loc, files)
            return
        for key in kr.delta.deleted:
            parts = kv_file(src, key)
            if parts is not None:
                edit.delete(loc + parts)
        for key, e in kr.delta.puts.items():
            parts = kv_file(src, key)
            if parts is not None:
                edit.put(loc + parts, render(key, e.value))
        for key, value in reads.issues.get(src.path, {}).items():
            parts = kv_file(src, key)
            if parts is not None and value is not None:
                edit.put(loc + parts, render(key, value))

    def _fold_stream(self, edit: TreeEdit, src: Source, sr: _StreamRead) -> None:
        loc = src.location
        if src.policy == "full":
            for m in sr.delta.msgs:
                parts = msg_file(src, m.subject, m.seq)
                if parts is not None:
                    edit.put(loc + parts, m.data)
            return
        threads: dict[str, list[Any]] = defaultdict(list)
        for m in sr.delta.msgs:
            threads[m.subject].append(m)
        for subject, msgs in threads.items():
            parts = thread_file(src, subject)
            if parts is None:
                continue
            cur = edit.read(loc + parts)
            last = digest_last_seq(cur) if cur else 0
            new = [digest_section(m) for m in sorted(msgs, key=lambda m: m.seq) if m.seq > last]
            if new:
                edit.put(loc + parts, (cur or digest_header(src, subject)) + b"".join(new))


# -- restore ------------------------------------------------------------------------------------


@dataclass
class RestoreLine:
    action: str  # "written", "skipped", "would write", "not restored"
    path: str  # the file in the mount (or the settled path)
    key: str = ""
    why: str = ""

    def __str__(self) -> str:
        where = f"{self.path} ({self.key})" if self.key else self.path
        return f"{self.action} {where}" + (f": {self.why}" if self.why else "")


async def restore(store: Store, config: MountConfig, settle: SettleConfig, *, rev: str | None = None,
                  only: Iterable[str] = (), dry_run: bool = False, writer: str = "hvfs-restore") -> list[RestoreLine]:
    """Write a settled tree back into NATS, key by key with compare-and-set.

    A key whose revision in NATS (a value or a delete) is newer than the one the
    commit records for its bucket is skipped, and so is one whose value is what
    the file holds; missing buckets are created from the config (not in a dry run).
    Only KV paths settled ``full`` are restored: digests and stream messages are a
    record, not values to publish again.
    """
    from ..vfs.layout import Layout

    if settle.repo is None:
        raise Invalid("restore: no repository (--repo, or settle.repo in the config)")
    sources = resolve(config, settle, only)
    git = await trio.to_thread.run_sync(Git.open, settle.repo, settle.branch)
    try:
        head = await trio.to_thread.run_sync(git.resolve, rev)
        marks = Marks.parse(head.trailers)

        def files() -> dict[str, list[tuple[tuple[bytes, ...], bytes]]]:
            with git.reading():
                edit = git.edit(head)
                return {s.path: [(p, edit.content(sha)) for p, sha in edit.files(s.location)]
                        for s in sources if s.kind == "kv" and s.policy == "full"}

        contents = await trio.to_thread.run_sync(files)
    finally:
        git.close()
    out: list[RestoreLine] = []
    layout = Layout(store, config, writer)
    by_path = {s.path: s for s in sources}
    overlays: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for s in sources:
        if s.policy == "overlay" and s.issues in by_path:
            overlays[s.issues or ""] = await _overlay_state(store, s, by_path[s.issues or ""])
    for src in sources:
        if src.kind == "stream" and not dry_run:
            await _ensure_stream(store, layout, src)
        if src.kind != "kv" or src.policy != "full":
            why = ("a stream's messages (and digests) are a record, not values to publish again"
                   if src.kind == "stream" else
                   f"policy {src.policy}: its settle_fields are in the files of {src.issues}, not values of its own")
            out.append(RestoreLine("not restored", src.path, why=why))
            continue
        if marks.paths.get(src.path, ("", ""))[1] != src.fingerprint or src.name not in marks.buckets:
            out.append(RestoreLine("not restored", src.path,
                                   why=f"commit {head.commit.decode()[:12]} does not hold {src.path} as the "
                                       "config settles it (another binding, format or directory)"))
            continue
        out += await _restore_source(store, layout, src, marks.buckets[src.name], contents[src.path],
                                     overlays.get(src.path, {}), dry_run, writer)
    return out


async def _ensure_stream(store: Store, layout: Any, src: Source) -> None:
    """An empty server gets the config's streams too (empty: messages are not restored)."""
    try:
        await store.stream(src.name)
    except NotFound:
        await layout.stream(src.binding)


async def _overlay_state(store: Store, ov: Source, issues: Source) -> dict[str, list[dict[str, Any]]]:
    try:
        whole = await store.kv_since(ov.name, 0)
    except NotFound:
        return {}
    cache = _OverlayCache(whole.last, {})
    Settler._apply_overlays(ov, issues, cache, whole.puts, {})
    return {ik: [ovs[k] for k in sorted(ovs)] for ik, ovs in cache.by_issue.items()}


async def _restore_source(store: Store, layout: Any, src: Source, recorded: int,
                          files: list[tuple[tuple[bytes, ...], bytes]], overlays: dict[str, list[dict[str, Any]]],
                          dry_run: bool, writer: str) -> list[RestoreLine]:
    b = src.binding
    assert isinstance(b, Binding)
    out: list[RestoreLine] = []
    try:
        await store.bucket(src.name)
        state: KvDelta | None = await store.kv_since(src.name, 0)
    except NotFound:
        state = None
        if not dry_run:
            await layout.bucket(b)
    codec = src.codec()
    ttl = b.ttl if b.ttl is not None and store.msg_ttl else None
    headers = {"Hvfs-Writer": writer}
    for parts, data in files:
        shown = "/".join([src.path, *(p.decode(errors="replace") for p in parts)])
        key = file_key(src, parts)
        if key is None:
            out.append(RestoreLine("skipped", shown, why="not the file of a key here"))
            continue
        value = restore_value(src, parts, data, writer)
        cur = state.puts.get(key) if state is not None else None
        gone = state.deleted.get(key) if state is not None else None
        newest = cur.revision if cur is not None else gone
        if newest is not None and newest > recorded:
            what = "changed" if cur is not None else "deleted"
            out.append(RestoreLine("skipped", shown, key, f"newer in NATS ({what} at revision {newest}, "
                                                          f"the commit holds revision {recorded})"))
            continue
        if cur is not None:
            rendered = cur.value
            if overlays:
                rendered = apply_overlays(rendered, overlays.get(key, ()), b.schema_model)
            if cur.value == value or kv_content(codec, rendered) == data:
                out.append(RestoreLine("skipped", shown, key, f"unchanged (revision {cur.revision})"))
                continue
        if dry_run:
            out.append(RestoreLine("would write", shown, key, "update" if cur is not None else "create"))
            continue
        try:
            if cur is not None:
                rev = await store.update(src.name, key, value, cur.revision, ttl=ttl, headers=headers)
            else:
                rev = await store.create(src.name, key, value, ttl=ttl, headers=headers)
        except (Conflict, Exists):
            out.append(RestoreLine("skipped", shown, key, "changed in NATS during the restore"))
            continue
        except HvfsError as e:
            out.append(RestoreLine("skipped", shown, key, f"refused: {e.reason}"))
            continue
        out.append(RestoreLine("written", shown, key, f"revision {rev}"))
    return out
