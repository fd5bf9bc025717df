"""The soak bench's measurements (bench/serve/soak.py): samples of the app's processes, the
per-window tables and the bounds ``--check`` applies."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from bench.report import percentile

# Process label -> marks its command line contains (first match wins; Ray and vLLM set them).
PROCESSES = {"EngineCore": ("VLLM::EngineCore", "EngineCore_"),
             "VLLM::Worker": ("VLLM::Worker",), "ingress replica": (":ingress",),
             "engine replica": (":engine",), "proxy": ("ProxyActor",),
             "controller": ("ServeController",), "raylet": ("raylet",), "gcs": ("gcs_server",),
             "dashboard agent": ("dashboard/agent.py",), "dashboard": ("dashboard/dashboard.py",),
             "runtime env agent": ("runtime_env/agent",), "log monitor": ("log_monitor.py",),
             "monitor": ("autoscaler/_private/monitor.py",), "idle Ray workers": ("ray::IDLE",),
             "vLLM API server": ("VLLM::APIServer", "vllm.entrypoints.openai.api_server")}
ENGINE = ("engine replica", "EngineCore", "VLLM::Worker", "vLLM API server")
FRONT = ("ingress replica", "proxy", "controller", "raylet", "gcs")
GAUGES = ("qrhead_capture_active_requests", "qrhead_capture_held_results")
MB = 1024 * 1024


@dataclass
class Sample:
    t: float                                          # seconds after the soak started
    rss_mb: dict[str, float] = field(default_factory=dict)    # label -> MB (summed)
    fds: dict[str, int] = field(default_factory=dict)
    store_mb: float | None = None                     # Ray's object store in use
    gauges: dict[str, float] = field(default_factory=dict)


def label(cmdline: str) -> str | None:
    return next((name for name, marks in PROCESSES.items()
                 if any(mark in cmdline for mark in marks)), None)


def sample(t: float, root_pid: int, url: str, headers: dict[str, str]) -> Sample:
    """RSS and fds of ``root_pid``'s descendants by label, the object store, the gauges."""
    import psutil

    out = Sample(t)
    rss, fds = defaultdict(float), defaultdict(int)
    for proc in psutil.Process(root_pid).children(recursive=True):
        try:
            name = label(" ".join(proc.cmdline()))
            if name is not None:
                rss[name] += proc.memory_info().rss / MB
                fds[name] += proc.num_fds()
        except psutil.Error:            # it exited between the listing and the read
            continue
    out.rss_mb, out.fds = dict(rss), dict(fds)
    out.store_mb = object_store_mb()
    out.gauges = capture_gauges(url, headers)
    return out


def object_store_mb() -> float | None:
    """MB in Ray's object store across nodes (None without a Ray connection: plain vLLM; never
    another cluster on this box, which the state API would find by itself)."""
    import ray
    if not ray.is_initialized():
        return None
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address
    address = ray.get_runtime_context().gcs_address
    return get_memory_info_reply(get_state_from_address(address)).store_stats \
        .object_store_bytes_used / MB


def capture_gauges(url: str, headers: dict[str, str]) -> dict[str, float]:
    """The app's capture gauges from /metrics (summed over series; empty for plain vLLM)."""
    import httpx
    try:
        text = httpx.get(f"{url}/metrics", headers=headers, timeout=30).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for name in GAUGES:
        values = [float(v) for v in re.findall(rf"^ray_{name}{{[^}}]*}} (\S+)$", text, re.M)]
        if values:
            out[name] = sum(values)
    return out


def settled_gauges(url: str, headers: dict[str, str], wait_s: float) -> dict[str, float]:
    """The capture gauges once they read 0, or their last values after ``wait_s``."""
    import time
    deadline = time.monotonic() + wait_s
    while True:
        gauges = capture_gauges(url, headers)
        if not any(gauges.values()) or time.monotonic() > deadline:
            return gauges
        time.sleep(5)


# --- bounds -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bounds:
    rss_growth: float           # engine processes, fraction
    front_rss_growth: float     # the others, fraction
    fd_growth: int              # any process, open fds


def check(results: list, samples: list[Sample], warmup_s: float, bounds: Bounds) -> list[str]:
    """What breaks the bounds (empty: all hold)."""
    failures = []
    codes = Counter(status for _, _, _, status, _ in results)
    server = {c: n for c, n in codes.items() if c == 0 or c >= 500}
    if server:
        failures.append(f"5xx or transport failures: {server}")
    wrong = Counter(status for _, expect, _, status, _ in results
                    if expect == "4xx" and not 400 <= status < 500)
    if wrong:
        failures.append(f"bad requests not answered 4xx: {dict(wrong)}")
    first, last = baseline(samples, warmup_s), samples[-1] if samples else None
    if first is None or last is None or first is last:
        return failures + ["no process sample after the warm-up"]
    if any(last.gauges.values()):
        failures.append(f"capture state left after the last request: {last.gauges}")
    for name in ENGINE + FRONT:
        if name not in first.rss_mb:
            continue
        bound = bounds.rss_growth if name in ENGINE else bounds.front_rss_growth
        growth = last.rss_mb.get(name, 0.0) / first.rss_mb[name] - 1
        if growth > bound:
            failures.append(f"{name}: RSS {first.rss_mb[name]:.0f} -> "
                            f"{last.rss_mb.get(name, 0.0):.0f} MB (+{100 * growth:.1f} %, bound "
                            f"{100 * bound:.0f} %)")
        fd_growth = last.fds.get(name, 0) - first.fds[name]
        if fd_growth > bounds.fd_growth:
            failures.append(f"{name}: open fds {first.fds[name]} -> {last.fds.get(name, 0)} "
                            f"(bound +{bounds.fd_growth})")
    return failures


def baseline(samples: list[Sample], warmup_s: float) -> Sample | None:
    """The first sample at or after the warm-up."""
    return next((s for s in samples if s.t >= warmup_s), None)


# --- the report ---------------------------------------------------------------------------------
def windows(results: list, window_s: float) -> dict[int, list]:
    out: dict[int, list] = defaultdict(list)
    for r in results:
        out[int(r[2] // window_s)].append(r)
    return dict(sorted(out.items()))


def traffic_table(results: list, window_s: float) -> str:
    routes = sorted({r[0] for r in results if r[1] == "200"})
    head = ("| window | requests | " + " | ".join(f"{r} p50 / p99" for r in routes)
            + " | non-200 by code |")
    lines = [head, "|---" * (len(routes) + 3) + "|"]
    for w, rows in windows(results, window_s).items():
        cells = []
        for route in routes:
            ok = sorted(lat for rt, _, _, s, lat in rows if rt == route and s == 200)
            cells.append(f"{percentile(ok, 0.5):.2f} / {percentile(ok, 0.99):.2f} s "
                         f"({len(ok)})" if ok else "-")
        bad = Counter((rt, s) for rt, _, _, s, _ in rows if s != 200)
        codes = ", ".join(f"{rt} {s}: {n}" for (rt, s), n in sorted(bad.items())) or "none"
        lines.append(f"| {_span(w, window_s)} | {len(rows)} | " + " | ".join(cells)
                     + f" | {codes} |")
    return "\n".join(lines)


def resource_table(samples: list[Sample], window_s: float, what: str) -> str:
    """``what`` ("rss_mb" or "fds") of each process at the end of each window."""
    ends = window_ends(samples, window_s)
    names = [n for n in PROCESSES if any(n in getattr(s, what) for s in ends)]
    extra = what == "rss_mb"            # the object store and the gauges once, beside RSS
    lines = ["| at | " + " | ".join(names)
             + (" | object store | capture active / held |" if extra else " |"),
             "|---" * (len(names) + 1 + 2 * extra) + "|"]
    for s in ends:
        values = getattr(s, what)
        store = "-" if s.store_mb is None else f"{s.store_mb:.1f} MB"
        gauges = " / ".join(f"{s.gauges[g]:.0f}" for g in GAUGES if g in s.gauges) or "-"
        lines.append(f"| {s.t / 60:.1f} min | " + " | ".join(
            f"{values[n]:.0f}" if n in values else "-" for n in names)
            + (f" | {store} | {gauges} |" if extra else " |"))
    return "\n".join(lines)


def p99_drift(results: list, window_s: float) -> list[str]:
    """Per route: the largest p99 of a later window against the first window's."""
    by_window = windows(results, window_s)
    out = []
    for route in sorted({r[0] for r in results if r[1] == "200"}):
        p99 = [percentile(sorted(lat for rt, _, _, s, lat in rows if rt == route and s == 200),
                          0.99) for rows in by_window.values()]
        p99 = [p for p in p99 if not math.isnan(p)]
        if len(p99) > 1:
            worst = max(p99[1:])
            out.append(f"- {route}: first window {p99[0]:.2f} s, worst later window "
                       f"{worst:.2f} s ({100 * (worst / p99[0] - 1):+.0f} %)")
    return out


def window_ends(samples: list[Sample], window_s: float) -> list[Sample]:
    """The first sample, then the last sample of each window."""
    by_window: dict[int, Sample] = {}
    for s in samples:
        by_window[int(s.t // window_s)] = s
    return samples[:1] + [s for s in by_window.values() if s is not samples[0]]


def growth_lines(samples: list[Sample], warmup_s: float) -> list[str]:
    first, last = baseline(samples, warmup_s), samples[-1] if samples else None
    if first is None or first is last:
        return []
    out = []
    for name, before in first.rss_mb.items():
        after = last.rss_mb.get(name, math.nan)
        out.append(f"- {name}: {before:.0f} -> {after:.0f} MB ({100 * (after / before - 1):+.1f} "
                   f"%), fds {first.fds[name]} -> {last.fds.get(name, '-')}")
    return out


def markdown(facts: dict[str, str], results: list, samples: list[Sample], window_s: float,
             warmup_s: float, failures: list[str]) -> str:
    out = ["# Soak bench", "", "_Written by `bench/serve/soak.py`; rerun the command below "
           "rather than editing it._", ""]
    out += [f"- **{k}**: {v}" for k, v in facts.items()]
    out += ["", "Latency of the answered requests per window (OK count in brackets):", "",
            traffic_table(results, window_s), "",
            "RSS in MB per process (summed over processes of one kind):", "",
            resource_table(samples, window_s, "rss_mb"), "", "Open file descriptors:", "",
            resource_table(samples, window_s, "fds"), "",
            "p99 against the first window:", ""]
    out += p99_drift(results, window_s)
    out += ["", f"Growth from the end of the warm-up ({warmup_s / 60:.1f} min) to the end:", ""]
    out += growth_lines(samples, warmup_s)
    out += ["", "Bounds (`--check`): " + ("all hold" if not failures else
                                          "; ".join(failures)), ""]
    return "\n".join(out)


def _span(w: int, window_s: float) -> str:
    return f"{w * window_s / 60:.0f}-{(w + 1) * window_s / 60:.0f} min"
