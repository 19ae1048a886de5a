#!/usr/bin/env python
"""Summarise a ``py-spy record --format raw`` profile (collapsed stacks): top functions.

    .venv/bin/python bench/spy_summary.py PROFILE.txt [--top 25] [--match hvfs/]

Prints, per thread, the samples and then the functions with the most
inclusive and the most self samples (only frames matching --match, if given,
for the inclusive list). Samples of idle threads are not in py-spy's output
unless it was run with --idle.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

_LINE_RE = re.compile(r"\s*\(([^():]+):\d+\)$")


def frame_name(f: str) -> str:
    """'fn (file.py:12)' -> 'fn (file.py)': merge the lines of one function."""
    return _LINE_RE.sub(lambda m: f" ({m.group(1)})", f.strip())


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("profile")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--match", default="", help="only frames containing this in the inclusive list")
    a = p.parse_args()
    per_thread: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    self_: collections.Counter[str] = collections.Counter()
    total = 0
    for line in open(a.profile):
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith("thread") else "?"
        per_thread[thread] += n
        total += n
        names = [frame_name(f) for f in frames[1:]] if thread != "?" else [frame_name(f) for f in frames]
        for name in set(names):
            if a.match in name:
                incl[name] += n
        if names:
            self_[names[-1]] += n
    print(f"{total} samples")
    for t, n in per_thread.most_common():
        print(f"  {n:7d} {100 * n / total:5.1f}%  {t}")
    print(f"\ninclusive (frames matching {a.match!r}):")
    for name, n in incl.most_common(a.top):
        print(f"  {n:7d} {100 * n / total:5.1f}%  {name}")
    print("\nself:")
    for name, n in self_.most_common(a.top):
        print(f"  {n:7d} {100 * n / total:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
