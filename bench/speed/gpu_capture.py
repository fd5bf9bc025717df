"""Capture maths vs the reference's per-layer recompute, on model-shaped random layers
(issue 6, item 3). Needs torch only (plus the torch-only ``qrhead_vllm/core``), no vLLM.

    python bench/speed/gpu_capture.py                              # GPU: 8B and 70B shapes, 32K-128K
    python bench/speed/gpu_capture.py --device cpu --tokens 4096   # small CPU run (smoke / local)

*Ours* is what the vLLM hook does per forward: for each layer holding selected heads, gather that
layer's keys from a paged cache through a (shuffled) block table, compute the selected heads'
softmax rows for the query span only, and copy the row sums to the host (capture.py
accumulates on the CPU). *Reference* is the recompute the original QRHead code runs after its
forward (docs/method.md §6): every layer, every head, ``repeat_kv`` keys, the full score matrix,
a dense ``ones``/``triu`` causal mask as large as the scores, logsumexp and exp, mean over the
span, and the per-layer results stacked. Random weights: only shapes matter for cost. Weights
and one layer's KV are shared by all layers (the time of a layer does not depend on its values).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _load_core():
    """``qrhead_vllm.core.attention``; by file path when the package's own deps (pydantic,
    yaml) are missing, as on the bare accelerator machine."""
    sys.path.insert(0, str(ROOT))
    try:
        from qrhead_vllm.core import attention
        return attention
    except ImportError:
        path = ROOT / "qrhead_vllm" / "core" / "attention.py"
        spec = importlib.util.spec_from_file_location("qrhead_core_attention", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


core = _load_core()


@dataclass(frozen=True)
class Shape:
    name: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    heads: tuple[tuple[int, int], ...]   # selected (layer, query head)

    def by_layer(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for layer, head in self.heads:
            out.setdefault(layer, []).append(head)
        return out


# The paper's NQ head sets (configs/heads/llama-3.1-{8b,70b}-instruct-nq.yaml), copied here so
# this script needs no YAML/pydantic: 16 heads over 5 layers, 32 heads over 12 layers.
HEADS_8B = ((14, 22), (13, 16), (14, 28), (14, 31), (16, 19), (14, 1), (16, 26), (17, 24),
            (14, 0), (13, 0), (16, 25), (13, 12), (13, 1), (13, 10), (17, 27), (20, 14))
HEADS_70B = ((31, 32), (35, 26), (35, 25), (35, 21), (39, 41), (35, 29), (38, 18), (37, 9),
             (52, 19), (35, 6), (47, 18), (52, 58), (35, 24), (35, 28), (37, 29), (35, 40),
             (37, 25), (39, 40), (34, 1), (31, 39), (37, 24), (35, 23), (31, 37), (35, 20),
             (33, 18), (35, 50), (64, 31), (35, 42), (37, 28), (47, 17), (35, 19), (35, 3))
SHAPES = {
    "8b": Shape("Llama-3.1-8B", 32, 32, 8, 128, HEADS_8B),
    "70b": Shape("Llama-3.1-70B", 80, 64, 8, 128, HEADS_70B),
}


@dataclass
class Layer:
    """One layer's inputs: span queries of all heads, a paged key cache and the same keys
    dense (the reference keeps a contiguous per-layer cache)."""

    q: torch.Tensor             # [n, H, D] post-RoPE queries of the span
    cache: torch.Tensor         # [num_blocks, block_size, H_kv, D]
    block_table: torch.Tensor   # [blocks of the sequence], shuffled physical ids
    dense_keys: torch.Tensor    # [1, H_kv, T, D]
    tokens: int


def make_layer(shape: Shape, tokens: int, span: int, block_size: int, dtype, device) -> Layer:
    g = torch.Generator(device="cpu").manual_seed(0)
    blocks = -(-tokens // block_size)
    spare = 4   # a few unused blocks, so physical ids differ from logical ones
    cache = torch.randn(blocks + spare, block_size, shape.num_kv_heads, shape.head_dim,
                        generator=g).to(device=device, dtype=dtype)
    table = torch.randperm(blocks + spare, generator=g)[:blocks].to(torch.int32).to(device)
    q = torch.randn(span, shape.num_heads, shape.head_dim, generator=g).to(device=device,
                                                                            dtype=dtype)
    dense = core.gather_paged_keys(cache, table, tokens).unsqueeze(0).contiguous()
    return Layer(q, cache, table, dense, tokens)


def ours(shape: Shape, layer: Layer) -> list[torch.Tensor]:
    """The hook's work for one request: selected heads of the layers that hold them."""
    n, tokens = layer.q.shape[0], layer.tokens
    positions = torch.arange(tokens - n, tokens, device=layer.q.device)
    group = shape.num_heads // shape.num_kv_heads
    scale = shape.head_dim ** -0.5
    out = []
    for _, heads in sorted(shape.by_layer().items()):
        idx = torch.tensor(heads, device=layer.q.device)
        keys = core.gather_paged_keys(layer.cache, layer.block_table, tokens)
        rows = core.span_attention_rows(layer.q[:, idx], keys, positions, idx // group, scale)
        out.append(rows.cpu())
    return out


def reference_layer(q: torch.Tensor, keys: torch.Tensor, prescale: bool = False) -> torch.Tensor:
    """One layer of the reference recompute: [1, H, n, D] queries, [1, H_kv, T, D] keys →
    [1, H, n, T] probabilities, with the reference's dense mask and dtype (docs/method.md §6).
    ``prescale``: scale q by 1/√d before the product, as the reference's code does since its
    PR #3 (same maths, different rounding)."""
    group = q.shape[1] // keys.shape[1]
    full = keys[:, :, None].expand(-1, -1, group, -1, -1).reshape(
        1, q.shape[1], keys.shape[2], keys.shape[3])                  # repeat_kv: a copy
    if prescale:
        scores = torch.matmul(q / math.sqrt(q.shape[-1]), full.transpose(2, 3))
    else:
        scores = torch.matmul(q, full.transpose(2, 3)) / math.sqrt(q.shape[-1])
    n, t = scores.shape[-2], scores.shape[-1]
    mask = torch.triu(torch.ones_like(scores.transpose(-1, -2).squeeze(0)), diagonal=-(t - n))
    mask = (1 - mask.transpose(-1, -2)) * torch.finfo(mask.dtype).min
    scores += mask.unsqueeze(0)
    return torch.exp(scores - torch.logsumexp(scores, dim=-1, keepdim=True))


def reference(shape: Shape, layer: Layer) -> torch.Tensor:
    """Every layer, every head; the per-layer span means stacked as the reference does."""
    q = layer.q.transpose(0, 1).unsqueeze(0)                            # [1, H, n, D]
    per_layer = [reference_layer(q, layer.dense_keys).mean(2).squeeze(0)
                 for _ in range(shape.num_layers)]
    return torch.stack(per_layer)                                       # [L, H, T]


def check_same_maths(shape: Shape, layer: Layer) -> float:
    """Max |ours/n - reference| over the selected heads (both compute the same rows)."""
    mine = ours(shape, layer)
    q = layer.q.transpose(0, 1).unsqueeze(0)
    ref = reference_layer(q, layer.dense_keys).float().mean(2).squeeze(0).cpu()
    worst = 0.0
    for rows, (_, heads) in zip(mine, sorted(shape.by_layer().items())):
        worst = max(worst, (rows / layer.q.shape[0] - ref[heads]).abs().max().item())
    return worst


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, device, reps: int) -> float:
    fn()                                                    # warm-up (kernels, allocator)
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_bytes(fn, device) -> int:
    """Peak bytes allocated by ``fn`` above what was allocated before it (its own tensors).

    CUDA: the caching allocator's peak counter. CPU: torch has no allocator statistics, so we
    replay the profiler's allocation/free events in time order and take the running maximum.
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shapes", default="8b,70b", help=f"comma list of {','.join(SHAPES)}")
    p.add_argument("--tokens", default=None,
                   help="comma list of context lengths (default 32768,65536,131072 on CUDA)")
    p.add_argument("--span", type=int, default=50, help="query-span tokens")
    p.add_argument("--block-size", type=int, default=16, help="paged-cache block (vLLM GPU: 16)")
    p.add_argument("--dtype", default=None, help="cache/query dtype (default float16 on CUDA, as "
                   "the reference; float32 on CPU)")
    p.add_argument("--reps", type=int, default=3)
    return p.parse_args(argv)


def run(args) -> list[dict]:
    cuda = torch.device(args.device).type == "cuda"
    dtype = getattr(torch, args.dtype or ("float16" if cuda else "float32"))
    tokens = [int(t) for t in (args.tokens or ("32768,65536,131072" if cuda else "4096")
                               ).split(",")]
    rows = []
    for name in args.shapes.split(","):
        shape = SHAPES[name]
        for t in tokens:
            layer = make_layer(shape, t, args.span, args.block_size, dtype, args.device)
            row = {"shape": shape.name, "tokens": t, "heads": len(shape.heads),
                   "layers": len(shape.by_layer()), "max_diff": check_same_maths(shape, layer)}
            row["ours_s"] = median_seconds(lambda: ours(shape, layer), args.device, args.reps)
            row["ref_s"] = median_seconds(lambda: reference(shape, layer), args.device, args.reps)
            row["ours_peak"] = peak_bytes(lambda: ours(shape, layer), args.device)
            row["ref_peak"] = peak_bytes(lambda: reference(shape, layer), args.device)
            # The reference also keeps K and V of every layer to the end (docs/method.md §6,
            # item 1).
            row["ref_kv"] = 2 * shape.num_layers * t * shape.num_kv_heads * shape.head_dim \
                * layer.cache.element_size()
            rows.append(row)
            print(f"# {shape.name} {t} tokens done", file=sys.stderr, flush=True)
            del layer
    return rows


def table(rows: list[dict]) -> str:
    mib = 2 ** 20
    out = ["| shape | tokens | heads (layers) | ours ms | reference ms | speed-up | ours peak MiB "
           "| reference peak MiB | memory ratio | reference retained KV GiB | max diff |",
           "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(
            f"| {r['shape']} | {r['tokens']} | {r['heads']} ({r['layers']}) "
            f"| {1e3 * r['ours_s']:.1f} | {1e3 * r['ref_s']:.1f} | {r['ref_s'] / r['ours_s']:.0f}× "
            f"| {r['ours_peak'] / mib:.1f} | {r['ref_peak'] / mib:.1f} "
            f"| {r['ref_peak'] / max(r['ours_peak'], 1):.0f}× | {r['ref_kv'] / 2 ** 30:.2f} "
            f"| {r['max_diff']:.1e} |")
    return "\n".join(out)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.cuda.get_device_name(0) if torch.device(args.device).type == "cuda" \
        else "CPU"
    print(f"Capture maths vs reference recompute on {device}, torch {torch.__version__}, "
          f"span {args.span}, block {args.block_size}, median of {args.reps}\n")
    print(table(run(args)))


if __name__ == "__main__":
    main()
