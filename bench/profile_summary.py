"""Summarise a py-spy raw profile: where the bridge spends its samples.

python -m bench.profile_summary bench/out/profile-a-pushbridge-burst.txt
"""

from __future__ import annotations

import sys
from collections import Counter


def frame_key(frame: str) -> str:
    name, _, where = frame.partition(" (")
    return f"{name} ({where.split(':')[0].rsplit('/', 1)[-1]}"


def summarize(path: str, top: int = 40) -> None:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip().rpartition(" ")
            frames = [frame_key(x) for x in stack.split(";")]
            total += int(n)
            own[frames[-1]] += int(n)
            for key in set(frames):
                inclusive[key] += int(n)
    print(f"{total} samples\n-- own time")
    for k, v in own.most_common(top // 2):
        print(f"{v / total:6.1%}  {k}")
    print("-- inclusive")
    for k, v in inclusive.most_common(top):
        print(f"{v / total:6.1%}  {k}")


if __name__ == "__main__":
    summarize(sys.argv[1])
