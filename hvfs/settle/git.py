"""The git side of a settlement, with dulwich only: objects, one branch, a remote.

Nothing here touches a working tree or an index: a settlement writes objects
and moves ``refs/heads/<branch>`` with a compare-and-set, so a repository
with a checkout keeps it as it is. The tree of a commit is edited in place
(``TreeEdit``): only the directories on the way to a changed file are read
and written again, and the same files always make the same tree id.

Every failure is an ``HvfsError`` whose reason names the repository and what
to do; a failure never moves a ref (objects may have been written: git's gc
removes unreachable ones).
"""

from __future__ import annotations

import os
import stat
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from dulwich.client import get_transport_and_path
from dulwich.diff_tree import tree_changes
from dulwich.errors import GitProtocolError, HangupException, NotGitRepository
from dulwich.file import FileLocked
from dulwich.graph import can_fast_forward
from dulwich.objects import ZERO_SHA, Blob, Commit, ObjectID, ShaFile, Tree
from dulwich.objectspec import parse_commit
from dulwich.refs import Ref, check_ref_format
from dulwich.repo import Repo
from dulwich.trailers import parse_trailers

from ..errors import Busy, Conflict, HvfsError, Invalid, NotFound, Unavailable

__all__ = ["FILE_MODE", "Git", "Head", "ObjectID", "PushResult", "TreeEdit", "conflict"]

FILE_MODE = 0o100644
DIR_MODE = stat.S_IFDIR
VALUE = b".value"
#: fewer new objects than this are written loose, more as one pack (git's unpackLimit)
PACK_AT = 100
LOCK_WAIT = 2.0  # seconds a held ref lock is waited for, as git's core.filesRefLockTimeout does
_STALE = ObjectID(b"")  # the id of a directory being edited: written anew

Parts = tuple[bytes, ...]


@dataclass(frozen=True)
class Head:
    """A branch's commit: its id, tree, time and trailers."""

    commit: ObjectID
    tree: ObjectID
    time: int
    message: bytes
    trailers: list[tuple[str, str]]


class PushResult:
    OK = "ok"  # the remote branch is now ours
    UP_TO_DATE = "up to date"
    REFUSED = "refused"  # the remote branch moved on: fetch, redo on top


# -- the tree of a commit, edited ------------------------------------------------------------


class _Dir:
    __slots__ = ("entries", "subs", "id")

    def __init__(self, entries: dict[bytes, tuple[int, ObjectID]], id_: ObjectID | None) -> None:
        self.entries = entries  # name -> (mode, sha); a loaded or new directory's sha is stale
        self.subs: dict[bytes, _Dir] = {}  # the directories read (or made) below this one
        self.id = id_  # None: changed, to be written


class TreeEdit:
    """A commit's tree with files put and removed: directories are read when first
    reached and written again only when something below them changed.

    Placement as in the mount: a file whose name a directory needs (key ``a``
    beside ``a.b``) moves inside it as ``.value``, and back when the directory
    empties.
    """

    def __init__(self, read: Callable[[ObjectID], ShaFile], tree: ObjectID | None) -> None:
        self._read = read
        self.root = self._load(tree) if tree is not None else _Dir({}, None)
        self.new: dict[ObjectID, ShaFile] = {}  # objects made here, not yet written

    def _load(self, sha: ObjectID) -> _Dir:
        t = self._read(sha)
        if not isinstance(t, Tree):
            raise ValueError(f"object {sha.decode()} is a {t.type_name.decode()}, not a tree")
        return _Dir({e.path: (e.mode, e.sha) for e in t.iteritems()}, sha)

    def _sub(self, d: _Dir, name: bytes, create: bool) -> _Dir | None:
        sub = d.subs.get(name)
        if sub is not None:
            return sub
        e = d.entries.get(name)
        if e is None:
            if not create:
                return None
            sub = _Dir({}, None)
        elif stat.S_ISDIR(e[0]):
            sub = self._load(e[1])
        else:
            if not create:
                return None
            sub = _Dir({VALUE: e}, None)  # a file becomes a directory: it moves inside as .value
        d.subs[name] = sub
        d.entries[name] = (DIR_MODE, _STALE)
        return sub

    def _walk(self, parts: Parts, create: bool) -> list[_Dir] | None:
        chain = [self.root]
        for name in parts:
            d = self._sub(chain[-1], name, create)
            if d is None:
                return None
            chain.append(d)
        return chain

    @staticmethod
    def _dirty(chain: list[_Dir]) -> None:
        for d in chain:
            d.id = None

    def put(self, parts: Parts, data: bytes) -> bool:
        """Write a file (its directories made as needed); True if it changed."""
        chain = self._walk(parts[:-1], True)
        assert chain is not None
        d, name = chain[-1], parts[-1]
        e = d.entries.get(name)
        if e is not None and stat.S_ISDIR(e[0]):
            sub = self._sub(d, name, True)
            assert sub is not None
            chain.append(sub)
            d, name = sub, VALUE
            e = d.entries.get(name)
        b = Blob.from_string(data)
        if e == (FILE_MODE, b.id):
            return False
        self.new[b.id] = b
        d.entries[name] = (FILE_MODE, b.id)
        self._dirty(chain)
        return True

    def read(self, parts: Parts) -> bytes | None:
        """A file's content (None: none), through ``.value`` as ``put`` places it."""
        chain = self._walk(parts[:-1], False)
        if chain is None:
            return None
        d, name = chain[-1], parts[-1]
        e = d.entries.get(name)
        if e is not None and stat.S_ISDIR(e[0]):
            sub = self._sub(d, name, False)
            e = sub.entries.get(VALUE) if sub is not None else None
        if e is None or stat.S_ISDIR(e[0]):
            return None
        obj = self.new.get(e[1]) or self._read(e[1])
        assert isinstance(obj, Blob)
        return obj.data

    def delete(self, parts: Parts) -> bool:
        """Remove a file; directories left empty go, a lone ``.value`` folds back. True if it was there."""
        chain = self._walk(parts[:-1], False)
        if chain is None:
            return False
        names = list(parts)
        d, name = chain[-1], parts[-1]
        e = d.entries.get(name)
        if e is not None and stat.S_ISDIR(e[0]):
            sub = self._sub(d, name, False)
            if sub is None or VALUE not in sub.entries:
                return False
            chain.append(sub)
            names.append(VALUE)
            d, name = sub, VALUE
        elif e is None:
            return False
        del d.entries[name]
        d.subs.pop(name, None)
        self._dirty(chain)
        self._prune(chain, names)
        return True

    def _prune(self, chain: list[_Dir], names: list[bytes]) -> None:
        for i in range(len(chain) - 1, 0, -1):
            d, parent, name = chain[i], chain[i - 1], names[i - 1]
            if not d.entries:
                del parent.entries[name]
                parent.subs.pop(name, None)
            elif len(d.entries) == 1 and VALUE in d.entries and not stat.S_ISDIR(d.entries[VALUE][0]):
                parent.entries[name] = d.entries[VALUE]
                parent.subs.pop(name, None)
            else:
                return

    def replace(self, where: Parts, files: Mapping[Parts, bytes]) -> None:
        """Make the directory ``where`` hold exactly ``files`` (paths below it)."""
        fresh = TreeEdit(self._read, None)
        for parts, data in files.items():
            fresh.put(parts, data)
        self.new.update(fresh.new)
        if not where:
            self.root = fresh.root
            return
        if not fresh.root.entries:
            chain = self._walk(where[:-1], False)
            if chain is not None and where[-1] in chain[-1].entries:
                del chain[-1].entries[where[-1]]
                chain[-1].subs.pop(where[-1], None)
                self._dirty(chain)
                self._prune(chain, list(where[:-1]))
            return
        chain = self._walk(where[:-1], True)
        assert chain is not None
        chain[-1].subs[where[-1]] = fresh.root
        chain[-1].entries[where[-1]] = (DIR_MODE, _STALE)
        self._dirty(chain)

    def files(self, where: Parts) -> Iterator[tuple[Parts, ObjectID]]:
        """Every file below ``where``: (path below it, blob id)."""
        chain = self._walk(where, False)
        if chain is None:
            return
        stack: list[tuple[Parts, _Dir]] = [((), chain[-1])]
        while stack:
            pre, d = stack.pop()
            for name, (mode, sha) in sorted(d.entries.items()):
                if stat.S_ISDIR(mode):
                    sub = self._sub(d, name, False)
                    assert sub is not None
                    stack.append(((*pre, name), sub))
                else:
                    yield (*pre, name), sha

    def content(self, sha: ObjectID) -> bytes:
        obj = self.new.get(sha) or self._read(sha)
        assert isinstance(obj, Blob)
        return obj.data

    def write(self) -> ObjectID:
        """The root tree's id; the new trees join ``new``."""
        return self._write(self.root)

    def _write(self, d: _Dir) -> ObjectID:
        if d.id is not None:
            return d.id
        t = Tree()
        for name, (mode, sha) in d.entries.items():
            if stat.S_ISDIR(mode) and name in d.subs:
                sha = self._write(d.subs[name])
            t.add(name, mode, sha)
        d.id = t.id
        self.new[t.id] = t
        return t.id


# -- the repository -------------------------------------------------------------------------


class Git:
    """One repository and one branch of it; open with ``Git.open``, then ``close``."""

    def __init__(self, path: str, branch: str, repo: Repo) -> None:
        self.path = path
        self.branch = branch
        self.ref = Ref(b"refs/heads/" + branch.encode())
        self.repo = repo

    # -- opening -----------------------------------------------------------------------

    @classmethod
    def open(cls, path: str, branch: str) -> Git:
        where = os.path.abspath(path)
        if not os.path.exists(where):
            raise NotFound(f"repository {path}: no such directory; create it with "
                           f"'git init --bare {path}' (or give another repo)")
        if not os.path.isdir(where):
            raise Invalid(f"repository {path}: not a directory; give the path of a git repository")
        try:
            repo = Repo(where)
        except NotGitRepository:
            raise Invalid(f"repository {path}: not a git repository; create one with "
                          f"'git init --bare {path}' (or give another repo)") from None
        except Exception as e:
            raise Unavailable(f"repository {path}: cannot be opened ({type(e).__name__}: {e}); "
                              f"check it with 'git -C {path} fsck'") from None
        g = cls(path, branch, repo)
        try:
            g._check_branch()
        except BaseException:
            repo.close()
            raise
        return g

    def close(self) -> None:
        self.repo.close()

    def __enter__(self) -> Git:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_branch(self) -> None:
        if not check_ref_format(self.ref):
            raise Invalid(f"repository {self.path}: {self.branch!r} is not a branch name git takes; "
                          "choose another settle branch")
        refs = self.repo.refs
        try:
            has_branch = self.ref in refs
        except Exception as e:
            raise self._corrupt(e) from None
        if not has_branch:
            tag = Ref(b"refs/tags/" + self.branch.encode())
            if tag in refs:
                raise Invalid(f"repository {self.path}: {self.branch} is a tag, not a branch; "
                              "choose another settle branch")

    def _corrupt(self, e: BaseException) -> HvfsError:
        if isinstance(e, HvfsError):
            return e
        return Unavailable(f"repository {self.path} is corrupt or unreadable ({type(e).__name__}: {e}); "
                           f"check it with 'git -C {self.path} fsck', then settle again")

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Errors of reading objects (missing, truncated, not zlib) as the repository's corruption."""
        try:
            yield
        except (KeyError, ValueError, OSError, zlib.error, AssertionError) as e:
            raise self._corrupt(e) from None
        except Exception as e:
            if isinstance(e, HvfsError):
                raise
            raise self._corrupt(e) from None

    def obj(self, sha: ObjectID) -> ShaFile:
        return self.repo.object_store[sha]

    # -- the branch ----------------------------------------------------------------------

    def lock_path(self) -> str:
        return os.path.join(self.repo.controldir(), *self.ref.decode().split("/")) + ".lock"

    def check_unlocked(self, wait: float = LOCK_WAIT) -> None:
        """Busy if the branch stays locked for ``wait`` s: another writer holds it for milliseconds."""
        deadline = time.monotonic() + wait
        pause = 0.005
        while os.path.exists(self.lock_path()):
            if time.monotonic() >= deadline:
                raise Busy(self._locked_reason())
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def _locked_reason(self) -> str:
        return (f"repository {self.path}: branch {self.branch} is locked ({self.lock_path()} exists): "
                "another git command is writing it; wait for it, or remove the lock file if none runs")

    def head_id(self) -> ObjectID | None:
        with self.reading():
            sha = self.repo.refs.follow(self.ref)[1]
        return None if sha is None or sha == ZERO_SHA else sha

    def head(self, sha: ObjectID | None = None) -> Head | None:
        """The branch's commit (or ``sha``'s) with its trailers; its tree is read too (corruption shows now)."""
        if sha is None:
            sha = self.head_id()
            if sha is None:
                return None
        with self.reading():
            c = self.obj(sha)
            if not isinstance(c, Commit):
                raise Invalid(f"repository {self.path}: {self.ref.decode()} points at a "
                              f"{c.type_name.decode()}, not a commit; point the branch at a commit "
                              "or choose another settle branch")
            t = self.obj(c.tree)
            if not isinstance(t, Tree):
                raise ValueError(f"the tree of commit {sha.decode()} is a {t.type_name.decode()}")
            _, trailers = parse_trailers(c.message)
        return Head(sha, c.tree, c.commit_time, c.message, [(t.key, t.value) for t in trailers])

    def resolve(self, rev: str | None) -> Head:
        """A commit by revision (a sha, branch, tag; None: the settle branch)."""
        if rev is None:
            h = self.head()
            if h is None:
                raise NotFound(f"repository {self.path}: branch {self.branch} has no commit yet; "
                               "nothing to restore (settle first, or give --rev)")
            return h
        try:
            c = parse_commit(self.repo, rev.encode())
        except (KeyError, ValueError) as e:
            raise NotFound(f"repository {self.path}: no commit {rev!r} ({e}); give a commit id, "
                           "branch or tag") from None
        except Exception as e:
            raise self._corrupt(e) from None
        h = self.head(c.id)
        assert h is not None
        return h

    def edit(self, head: Head | None) -> TreeEdit:
        return TreeEdit(self.obj, head.tree if head is not None else None)

    def write_objects(self, objs: Mapping[ObjectID, ShaFile]) -> None:
        store = self.repo.object_store
        todo = [o for o in objs.values()]
        if len(todo) >= PACK_AT:
            store.add_objects([(o, None) for o in todo])
        else:
            for o in todo:
                store.add_object(o)

    def save(self, edit: TreeEdit) -> ObjectID:
        """Write the edited tree's new objects; its id."""
        tree = edit.write()
        self.write_objects(edit.new)
        edit.new.clear()
        return tree

    def changes(self, old: ObjectID | None, new: ObjectID) -> int:
        """Files added, changed or removed between two trees (only differing directories are read)."""
        return sum(1 for _ in tree_changes(self.repo.object_store, old, new))

    def commit(self, tree: ObjectID, parent: Head | None, author: str, message: str,
               trailers: list[tuple[str, str]], when: float | None = None) -> ObjectID:
        """Write a commit of ``tree`` (saved) on ``parent``; its id (no ref moves)."""
        c = Commit()
        c.tree = tree
        c.parents = [parent.commit] if parent is not None else []
        c.author = c.committer = author.encode()
        c.author_time = c.commit_time = int(when if when is not None else time.time())
        c.author_timezone = c.commit_timezone = 0
        msg = message.rstrip("\n") + "\n"
        if trailers:
            msg += "\n" + "".join(f"{k}: {v}\n" for k, v in trailers)
        c.message = msg.encode()
        self.repo.object_store.add_object(c)
        return c.id

    def move(self, old: ObjectID | None, new: ObjectID, why: str) -> bool:
        """Compare and set the branch: False if it no longer is ``old``.

        A lock held by another writer is waited for (bounded, see ``check_unlocked``).
        """
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                return bool(self.repo.refs.set_if_equals(self.ref, old if old is not None else ZERO_SHA, new,
                                                         message=why.encode()))
            except FileLocked:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Busy(self._locked_reason()) from None
                self.check_unlocked(left)
            except OSError as e:
                raise Unavailable(f"repository {self.path}: cannot move branch {self.branch}: {e}") from None

    def is_ancestor(self, old: ObjectID, new: ObjectID) -> bool:
        if old == new:
            return True
        try:
            return bool(can_fast_forward(self.repo, old, new))
        except KeyError:
            return False

    # -- a remote ------------------------------------------------------------------------

    def _client(self, remote: str) -> tuple[Any, str]:
        try:
            return get_transport_and_path(remote)  # type: ignore[no-any-return]
        except Exception as e:
            raise Invalid(f"remote {remote}: not a repository location git takes ({e})") from None

    def _remote_error(self, remote: str, e: BaseException) -> HvfsError:
        if isinstance(e, HvfsError):
            return e
        if isinstance(e, NotGitRepository):
            return Unavailable(f"remote {remote}: not a git repository; create it with "
                               f"'git init --bare {remote}' or fix settle.remote")
        if isinstance(e, HangupException | GitProtocolError):
            return Unavailable(f"remote {remote} refused or hung up ({e}); check that it exists and "
                               "takes pushes, then settle again")
        return Unavailable(f"remote {remote}: {type(e).__name__}: {e}; check the remote, then settle again")

    def _local_remote(self, remote: str) -> None:
        """A remote that is a local path must be a repository (dulwich would say less clearly)."""
        if "://" in remote or ":" in remote.split("/")[0]:
            return
        if not os.path.isdir(remote):
            raise Unavailable(f"remote {remote}: no such directory; create it with "
                              f"'git init --bare {remote}' or fix settle.remote")
        try:
            Repo(remote).close()
        except NotGitRepository:
            raise Unavailable(f"remote {remote}: not a git repository; create it with "
                              f"'git init --bare {remote}' or fix settle.remote") from None

    def fetch(self, remote: str) -> ObjectID | None:
        """The remote branch's commit, its objects fetched here (no ref of ours moves)."""
        self._local_remote(remote)
        client, path = self._client(remote)
        want: list[ObjectID] = []

        def determine_wants(refs: Mapping[Ref, ObjectID], depth: int | None = None) -> list[ObjectID]:
            sha = refs.get(self.ref)
            if sha is not None and sha != ZERO_SHA:
                want.append(sha)
                if sha not in self.repo.object_store:
                    return [sha]
            return []

        try:
            client.fetch(path, self.repo, determine_wants=determine_wants)
        except Exception as e:
            raise self._remote_error(remote, e) from None
        return want[0] if want else None

    def push(self, remote: str, new: ObjectID) -> str:
        """Fast-forward the remote branch to ``new``; REFUSED when it has moved on (fetch, redo)."""
        self._local_remote(remote)
        client, path = self._client(remote)
        seen: dict[str, ObjectID | None] = {}

        def update_refs(refs: dict[Ref, ObjectID]) -> dict[Ref, ObjectID]:
            old = refs.get(self.ref)
            seen["old"] = old
            if old == new:
                return {}
            if old is not None and old != ZERO_SHA and not self.is_ancestor(old, new):
                seen["refused"] = old
                return {}
            return {self.ref: new}

        def pack(have: Any, want: Any, *, ofs_delta: bool = False, progress: Any = None) -> Any:
            return self.repo.generate_pack_data(set(have), set(want), progress=progress, ofs_delta=ofs_delta)

        try:
            result = client.send_pack(path.encode() if isinstance(path, str) else path, update_refs,
                                      generate_pack_data=pack)
        except Exception as e:
            raise self._remote_error(remote, e) from None
        if "refused" in seen:
            return PushResult.REFUSED
        if seen.get("old") == new:
            return PushResult.UP_TO_DATE
        status = (getattr(result, "ref_status", None) or {}).get(self.ref)
        if status is not None:
            return PushResult.REFUSED  # the remote's compare-and-set lost: it moved meanwhile
        return PushResult.OK


def conflict(path: str, branch: str, tries: int) -> Conflict:
    return Conflict(f"repository {path}: branch {branch} moved {tries} times while settling; "
                    "another settler is busy: settle again")
