"""Summarise py-spy collapsed stacks: self time and inclusive time per function.

    .venv/bin/python bench/top_frames.py PROFILE.txt [N]
    .venv/bin/python bench/top_frames.py PROFILE.txt 15 --under PresenceCoalescer.flush --depth 2

``--under TEXT`` answers "where does the time under this frame go": for each
sample whose stack has a frame containing TEXT (its outermost such frame),
the next ``--depth`` frames below it (``self`` when it is the innermost),
as shares of all the samples, so they add up to that frame's inclusive share.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterator


def samples(path: str) -> Iterator[tuple[list[str], int]]:
    """(frames outermost first, count) per line of py-spy's raw output."""
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if stack and count.isdigit():
                yield stack.split(";"), int(count)


def short(frame: str) -> str:
    """``Class.method (path/to/file.py:123)`` -> ``Class.method:123``."""
    name, _, where = frame.partition(" (")
    line = where.rstrip(")").rpartition(":")[2]
    return f"{name}:{line}" if line else name


def under(path: str, text: str, depth: int) -> tuple[int, Counter[str]]:
    total = 0
    below: Counter[str] = Counter()
    for frames, c in samples(path):
        total += c
        for i, f in enumerate(frames):
            if text in f:
                below[" > ".join(short(x) for x in frames[i + 1 : i + 1 + depth]) or "self"] += c
                break
    return total, below


def tops(path: str) -> tuple[int, Counter[str], Counter[str]]:
    total = 0
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for frames, c in samples(path):
        total += c
        own[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    return total, own, incl


def main() -> None:
    p = argparse.ArgumentParser(description="Self and inclusive time per function of a py-spy raw profile.")
    p.add_argument("profile", help="py-spy record --format raw output (bench/suite.py --py-spy writes these)")
    p.add_argument("n", type=int, nargs="?", default=25, help="rows per list (default: %(default)s)")
    p.add_argument("--under", metavar="TEXT", help="instead: where the time under the frame containing TEXT goes")
    p.add_argument("--depth", type=int, default=1, help="with --under: frames below it per row (default: %(default)s)")
    args = p.parse_args()
    if args.under:
        total, below = under(args.profile, args.under, args.depth)
        share = sum(below.values())
        print(f"{total} samples, {100 * share / max(total, 1):.1f}% under {args.under!r}")
        for f, c in below.most_common(args.n):
            print(f"{100 * c / total:5.1f}% {f}")
        return
    total, own, incl = tops(args.profile)
    print(f"{total} samples")
    print("-- self --")
    for f, c in own.most_common(args.n):
        print(f"{100 * c / total:5.1f}% {f}")
    print("-- inclusive --")
    for f, c in incl.most_common(args.n):
        print(f"{100 * c / total:5.1f}% {f}")


if __name__ == "__main__":
    main()
