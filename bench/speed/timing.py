"""Side-by-side timing for the speed bench: interleaved variants, paired ratios, medians.

The box is shared (other sessions run tests and benches on the same 2 cores), so absolute
times drift by 2× within minutes. A ratio is therefore only taken between variants run back to
back on the same prompt in the same repetition, the order of the variants rotates between
repetitions (so none always runs first, right after a cache reset or a competing burst), and
we report medians of those paired ratios, never a ratio of averages from different moments.

Besides wall time we record the process's CPU time (user + system, all threads). With the
engine in-process it covers the engine's work too, and it does not grow while the scheduler
runs other people's processes, so its ratios are far steadier on a loaded box (it still
counts OpenMP threads spinning at barriers while their partner waits for a core).
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from bench.speed.prompts import Item


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


@dataclass
class Timings:
    """Seconds per variant, per item label, one entry per repetition (paired by index)."""

    variants: list[str]
    items: list[Item]
    seconds: dict[str, dict[str, list[float]]] = field(default_factory=dict)   # wall
    cpu: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    extra: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    load: list[float] = field(default_factory=list)   # load average seen at each repetition

    def series(self, kind: str) -> dict[str, dict[str, list[float]]]:
        return self.seconds if kind == "wall" else self.cpu if kind == "cpu" else self.extra[kind]

    def median(self, variant: str, label: str, kind: str = "wall") -> float:
        values = self.series(kind)[variant][label]
        return statistics.median(values) if values else float("nan")

    def ratios(self, num: str, den: str, labels: Sequence[str] | None = None,
               kind: str = "wall") -> list[float]:
        """Paired ratios ``num/den`` (same item, same repetition)."""
        labels = labels if labels is not None else [i.label for i in self.items]
        s = self.series(kind)
        return [a / b if b else float("nan")
                for label in labels for a, b in zip(s[num][label], s[den][label])]

    def ratio(self, num: str, den: str, labels: Sequence[str] | None = None,
              kind: str = "wall") -> "Ratio":
        return Ratio.of(self.ratios(num, den, labels, kind))

    def best_ratio(self, num: str, den: str, labels: Sequence[str] | None = None) -> float:
        """Median over items of min(num)/min(den) wall times: load only ever adds time, so
        the best of N repetitions is the closest we get to an idle machine."""
        labels = labels if labels is not None else [i.label for i in self.items]
        return statistics.median(min(self.seconds[num][l]) / min(self.seconds[den][l])
                                 for l in labels)


@dataclass(frozen=True)
class Ratio:
    """Median of paired ratios and their interquartile range (how noisy the box was)."""

    median: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, values: list[float]) -> "Ratio":
        if len(values) < 2:
            v = values[0] if values else float("nan")
            return cls(v, v, v, len(values))
        q = statistics.quantiles(values, n=4, method="inclusive")
        return cls(statistics.median(values), q[0], q[2], len(values))

    def __str__(self) -> str:
        return f"{self.median:.3f} (IQR {self.low:.3f}–{self.high:.3f}, n={self.count})"


def cpu_seconds() -> float:
    """CPU time of this process so far (user + system, every thread)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rotated(names: list[str], shift: int) -> list[str]:
    shift %= len(names)
    return names[shift:] + names[:shift]


def interleave(variants: dict[str, Callable[[Item], None]], items: list[Item], reps: int,
               title: str, warmup: bool = True, clock=time.perf_counter,
               cpu_clock=cpu_seconds) -> Timings:
    """Run every variant on every item ``reps`` times, rotating the variant order.

    A warm-up call of each variant on the smallest item comes first and is not timed (lazy
    allocations, first-call kernel selection, the engine's first schedule). A variant may
    return a dict of extra measurements (e.g. time spent inside the hook); they are kept in
    ``Timings.extra[key][variant][label]``.
    """
    names = list(variants)
    if len({i.label for i in items}) != len(items):     # timings are keyed by label
        raise ValueError(f"item labels must be distinct: {[i.label for i in items]}")
    empty = lambda: {n: {i.label: [] for i in items} for n in names}  # noqa: E731
    out = Timings(names, items, empty(), empty())
    if warmup and items:
        small = min(items, key=lambda i: i.tokens)
        for name in names:
            variants[name](small)
    for rep in range(reps):
        out.load.append(load_average())
        for k, item in enumerate(items):
            for name in rotated(names, rep + k):
                start, cpu = clock(), cpu_clock()
                extra = variants[name](item) or {}
                out.seconds[name][item.label].append(clock() - start)
                out.cpu[name][item.label].append(cpu_clock() - cpu)
                for key, value in extra.items():
                    out.extra.setdefault(key, empty())[name][item.label].append(value)
            line = ", ".join(f"{n} {out.seconds[n][item.label][-1]:.2f}s "
                             f"({out.cpu[n][item.label][-1]:.1f} cpu-s)" for n in names)
            print(f"[{title}] rep {rep + 1}/{reps} {item.label} ({item.tokens} tok): {line}",
                  file=sys.stderr, flush=True)
    out.load.append(load_average())
    return out
