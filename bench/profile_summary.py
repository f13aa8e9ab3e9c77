"""Summarise a py-spy raw profile (collapsed stacks) as the functions with the most inclusive and
self samples — what ``docs/performance.md`` quotes.

    python -m bench.profile_summary bench/results/profiles/s1-gateway-create.txt [--top 25]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def _name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def summarise(path: Path, top: int = 25, thread_filter: str | None = None) -> str:
    inclusive: Counter = Counter()
    self_: Counter = Counter()
    total = 0
    idle = 0
    for line in path.read_text().splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        stack, count = m.group(1), int(m.group(2))
        frames = stack.split(";")
        if thread_filter and thread_filter not in frames[0]:
            continue
        total += count
        names = [_name(f) for f in frames[1:] if f] or [frames[0]]
        leaf = names[-1]
        if any(w in leaf for w in ("select (selectors.py)", "poll (selectors.py)",
                                   "wait (threading.py)", "sleep", "_worker (concurrent")):
            idle += count
        self_[leaf] += count
        for name in set(names):
            inclusive[name] += count
    out = [f"{path.name}: {total} samples ({idle} idle/waiting in a leaf)"]
    out.append("  inclusive:")
    for name, n in inclusive.most_common(top):
        out.append(f"    {100 * n / total:5.1f}%  {name}")
    out.append("  self:")
    for name, n in self_.most_common(top):
        out.append(f"    {100 * n / total:5.1f}%  {name}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--thread", default=None,
                        help="only stacks whose thread name contains this")
    args = parser.parse_args()
    for f in args.files:
        print(summarise(f, args.top, args.thread))


if __name__ == "__main__":
    main()
