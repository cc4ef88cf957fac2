"""Counters for steps and tasks, merged into ``stats.json`` per stage and into the run summary.

A ``StepStats`` keeps ``input``, ``output`` and ``dropped`` by reason, so ``input == output + sum(dropped)``
holds for every step and every stage (checked by the runner when it merges).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepStats:
    name: str
    input: int = 0
    output: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    counters: Counter[str] = field(default_factory=Counter)  # free-form extras (bytes, escalations, …)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input": self.input,
            "output": self.output,
            "dropped": dict(sorted(self.dropped.items())),
            "counters": dict(sorted(self.counters.items())),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepStats:
        return cls(d["name"], d["input"], d["output"], Counter(d.get("dropped", {})), Counter(d.get("counters", {})))

    def merge(self, other: StepStats) -> None:
        self.input += other.input
        self.output += other.output
        self.dropped.update(other.dropped)
        self.counters.update(other.counters)

    def balanced(self) -> bool:
        return self.input == self.output + sum(self.dropped.values())


def merge_step_lists(lists: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Merge per-task step stats (same steps, same order) into per-stage totals."""
    merged: dict[str, StepStats] = {}
    for steps in lists:
        for d in steps:
            s = StepStats.from_dict(d)
            if s.name in merged:
                merged[s.name].merge(s)
            else:
                merged[s.name] = s
    return [s.to_dict() for s in merged.values()]


def merge_dropped(steps: list[dict[str, Any]]) -> Counter[str]:
    """Drop reasons summed over a stage's steps (``StepStats.to_dict()`` form)."""
    total: Counter[str] = Counter()
    for s in steps:
        total.update(s.get("dropped", {}))
    return total
