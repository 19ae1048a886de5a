"""docs/ kept true: the command pages against argparse, and the marked shell blocks run for real.

Command pages (``docs/commands/NAME.md``): each holds the exact ``hvfs NAME --help`` of
``hvfs.cli._parser()`` (rendered 80 columns wide) between the lines
``<!-- begin hvfs NAME --help -->`` and ``<!-- end hvfs NAME --help -->``. The tests compare
that block and its flag list with the parser, and check that every ``--flag`` the page's prose
names is one hvfs has. After changing a flag, regenerate the blocks with
``.venv/bin/python -m tests.test_docs --write`` (the prose around them is kept).

Doc tests: a shell block in ``docs/`` runs when the line right before its opening fence is
``<!-- doctest -->``::

    <!-- doctest -->
    ```sh
    printf 'title: Fix the login page\\npriority: 1\\n' > issues/is-42.yml
    ```

(A marker line, not an info string such as ```` ```sh doctest ````: tests/test_recipes.py reads
the ```` ```sh ```` blocks of docs/recipes.md literally, and the recipe text must not change.)
Each doc file with markers gets a fresh nats-server and a fresh mount of examples/fleet.yml
with ``--writer ag-7`` (the names the docs use, is-42 and ag-7, are the session fleet's too,
and ``work/`` takes jobs from a durable consumer: a private server collides with no other
test). Its marked blocks run in document order, each as ``bash -euo pipefail`` from the
mount root under a timeout. What a block assumes but the doc does not do before it (a peer's
presence, a job in the queue) is done by ``PRELUDES`` below, keyed by the block's first line.
Never mark a block that does not end (a heartbeat loop, ``tail -f``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hvfs.cli import _parser
from hvfs.server import EmbeddedServer

from .helpers import Mount, RawNats, publish, wait_for

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
COMMANDS = DOCS / "commands"
FLEET_CONFIG = ROOT / "examples" / "fleet.yml"
MARK = "<!-- doctest -->"
BLOCK_TIMEOUT = 10.0
HELP_COLUMNS = "80"


# -- the command pages against argparse ---------------------------------------------------------


def subparsers() -> dict[str, argparse.ArgumentParser]:
    p = _parser()
    action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def help_text(cmd: str) -> str:
    """``hvfs CMD --help`` as argparse prints it in a terminal 80 columns wide."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        return subparsers()[cmd].format_help()
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def parser_flags(cmd: str) -> list[str]:
    """Every option string of ``hvfs CMD`` that --help shows (suppressed ones left out)."""
    return [s for a in subparsers()[cmd]._actions if a.help != argparse.SUPPRESS
            for s in a.option_strings]


def _help_re(cmd: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- begin hvfs {cmd} --help -->\n```text\n)(.*?)(```\n<!-- end hvfs {cmd} --help -->)",
                      re.S)


def page_help(cmd: str) -> str:
    text = (COMMANDS / f"{cmd}.md").read_text()
    m = _help_re(cmd).search(text)
    assert m, f"docs/commands/{cmd}.md has no <!-- begin hvfs {cmd} --help --> block"
    return m.group(2)


def write_pages() -> None:
    """Rewrite the --help block of every command page from the parser."""
    for cmd in subparsers():
        path = COMMANDS / f"{cmd}.md"
        text = path.read_text()
        help_ = help_text(cmd)
        new, n = _help_re(cmd).subn(lambda m: m.group(1) + help_ + m.group(3), text)  # noqa: B023 - called at once
        if n != 1:
            raise SystemExit(f"{path}: no (or more than one) --help block")
        if new != text:
            path.write_text(new)
            print(f"rewrote {path.relative_to(ROOT)}")


def test_every_command_has_a_page():
    pages = sorted(p.stem for p in COMMANDS.glob("*.md"))
    assert pages == sorted(subparsers()), "docs/commands/ and the subcommands of hvfs differ"


@pytest.mark.parametrize("cmd", sorted(subparsers()))
def test_page_shows_the_help_exactly(cmd: str):
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the pages hold Python 3.11's argparse layout; the flag lists are compared below")
    assert page_help(cmd) == help_text(cmd), \
        f"docs/commands/{cmd}.md differs from hvfs {cmd} --help: run .venv/bin/python -m tests.test_docs --write"


@pytest.mark.parametrize("cmd", sorted(subparsers()))
def test_page_flag_list_is_the_parsers(cmd: str):
    shown = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", page_help(cmd)))
    want = set(parser_flags(cmd))
    assert want - shown == set(), f"flags of hvfs {cmd} the page lacks"
    assert shown - want - {"-h", "--help"} == set(), f"flags on the page hvfs {cmd} does not have"


def test_pages_name_only_real_flags():
    """The prose of every command page names only flags some hvfs command has."""
    known = {s for cmd in subparsers() for s in parser_flags(cmd)}
    foreign = {"--help", "--write", "--bare"}  # --write: this module's own; --bare: git init's
    for path in sorted(COMMANDS.glob("*.md")):
        prose = _help_re(path.stem).sub("", path.read_text())
        named = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", prose))
        assert named - known - foreign == set(), f"{path.name} names flags hvfs does not have"


# -- doc tests: the marked shell blocks, run on a real mount ------------------------------------


def marked_blocks(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of each ```sh block right after a ``<!-- doctest -->`` line."""
    lines = path.read_text().splitlines()
    out: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        if line != MARK:  # at the start of the line: an indented one is an example of the marker
            continue
        assert i + 1 < len(lines) and lines[i + 1] == "```sh", \
            f"{path.name}:{i + 1}: {MARK} must be followed by a ```sh line"
        end = lines.index("```", i + 2)
        out.append((i + 3, "\n".join(lines[i + 2:end]) + "\n"))
    return out


def doc_files() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if marked_blocks(p))


def _publish_job(ctx: DocMount) -> None:
    publish(ctx.raw, "work.doc-1", b"job: doc-1\n")
    wait_for(lambda: any(ctx.mount.path("work").iterdir()), what="a job in work/")


def _peer_present(ctx: DocMount) -> None:
    ctx.sh("printf 'status: ready\\n' | tee agents/ag-9.yml >/dev/null")


#: what a block assumes and its doc does not do before it: (doc, first line) -> setup
PRELUDES: dict[tuple[str, str], Callable[[DocMount], object]] = {
    # a peer to read: ag-9's presence
    ("recipes.md", "ls agents/ && cat agents/ag-9.yml && getfattr --only-values -n user.hvfs.expires "
                   "agents/ag-9.yml"): _peer_present,
    # a job published on work.> for the queue to deliver
    ("recipes.md", 'f=$(ls work | head -n 1) && cat "work/$f" && rm "work/$f"'): _publish_job,
    # the claim "who wrote it" asks about (the recipe before released it)
    ("recipes.md", "getfattr --only-values -n user.hvfs.writer claims/is-42/owner.yml"):
        lambda ctx: ctx.sh('(set -o noclobber; echo "agent_id: ag-7" > claims/is-42/owner.yml)'),
    # a refused write, so that there is a reason to read
    ("recipes.md", "getfattr --only-values -n user.hvfs.error agents/ag-7.yml; echo; tail -n 3 .hvfs/errors"):
        lambda ctx: ctx.sh("printf 'status: working\\n' | tee agents/ag-7.yml >/dev/null\n"
                           "printf 'status: [unclosed\\n' > agents/ag-7.yml || true"),
}


class DocMount:
    def __init__(self, mount: Mount, raw: RawNats) -> None:
        self.mount = mount
        self.raw = raw

    def sh(self, script: str, where: str = "") -> subprocess.CompletedProcess[str]:
        try:
            p = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=self.mount.mountpoint,
                               capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"{where or script!r}: still running after {BLOCK_TIMEOUT} s") from e
        if p.returncode != 0:
            raise AssertionError(f"{where or 'prelude'} exited {p.returncode}\n--- block:\n{script}"
                                 f"--- stdout:\n{p.stdout}--- stderr:\n{p.stderr}")
        return p


@pytest.fixture
def doc_mount(tmp_path: Path) -> Iterator[DocMount]:
    """A fresh nats-server and examples/fleet.yml mounted on it as ag-7."""
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("/dev/fuse is not available")
    srv = EmbeddedServer(tmp_path / "nats")
    srv.start()
    raw = m = None
    try:
        m = Mount(tmp_path / "m", srv.url, "--config", str(FLEET_CONFIG), "--writer", "ag-7").start()
        raw = RawNats(srv.url)
        yield DocMount(m, raw)
    finally:
        if raw is not None:
            raw.close()
        if m is not None:
            m.stop()
        srv.stop()


def test_docs_have_doctests():
    names = {p.relative_to(DOCS).as_posix() for p in doc_files()}
    assert {"quickstart.md", "recipes.md"} <= names
    assert len(marked_blocks(DOCS / "recipes.md")) >= 7


def test_preludes_name_marked_blocks():
    firsts = {(p.relative_to(DOCS).as_posix(), b.splitlines()[0]) for p in doc_files() for _, b in marked_blocks(p)}
    assert set(PRELUDES) - firsts == set(), "PRELUDES for blocks no doc marks (a doc changed?)"


@pytest.mark.parametrize("doc", [p.relative_to(DOCS).as_posix() for p in doc_files()])
def test_doc_blocks_run(doc: str, doc_mount: DocMount):
    for line, block in marked_blocks(DOCS / doc):
        prelude = PRELUDES.get((doc, block.splitlines()[0]))
        if prelude is not None:
            prelude(doc_mount)
        doc_mount.sh(block, where=f"docs/{doc}:{line}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_pages()
    else:
        raise SystemExit("usage: python -m tests.test_docs --write   (regenerate docs/commands/*.md --help blocks)")
