"""What the limit tests compute from the spans and starts the tasks record."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path


def spans(path: Path) -> dict[str, list[tuple[float, float]]]:
    """key -> (start, end) of every run, from the lines `held_key` writes."""
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    if path.exists():
        for line in path.read_text().splitlines():
            _, key, began, ended = line.split()
            out[key].append((float(began), float(ended)))
    return out


def max_overlap(runs: list[tuple[float, float]]) -> int:
    """The most runs that were under way at one moment (an end before a start at a tie)."""
    edges = sorted([(b, 1) for b, _ in runs] + [(e, -1) for _, e in runs], key=lambda x: (x[0], x[1]))
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def busiest_window(starts: list[tuple[float, float]], per_s: float) -> float:
    """The largest sum of costs of starts within any window of `per_s` seconds: (at, cost)."""
    starts = sorted(starts)
    best = total = 0.0
    lo = 0
    for at, cost in starts:
        total += cost
        while starts[lo][0] <= at - per_s:
            total -= starts[lo][1]
            lo += 1
        best = max(best, total)
    return best
