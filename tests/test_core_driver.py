"""CaptureDriver, the engine-neutral capture loop, fed the way an engine adapter feeds it: a
fake engine here batches requests into flattened steps, writes their keys into a paged cache
(shuffled blocks), and hands the driver each step's rows and each layer's tensors. Results must
equal the dense reference; one request's bad spec or failure must stay that request's error."""

from __future__ import annotations

import torch

from test_core_attention import (NUM_HEADS, NUM_KV_HEADS, SCALE, dense_span_rows, random_qk)

from qrhead_vllm.core.driver import CaptureDriver, LayerInput, ModelShape, StepRow, spec_error
from qrhead_vllm.integration.request_spec import RequestSpec, read_spec

LAYERS = (0, 2)
SHAPE = ModelShape(NUM_HEADS, NUM_KV_HEADS, num_layers=4, layers=frozenset(range(4)))
BLOCK, NUM_BLOCKS = 4, 64
HEADS = ((0, 6), (0, 1), (2, 3), (2, 4))


class FakeEngine:
    """Prompts of random q/k per layer, a paged cache, a block table with shuffled blocks."""

    def __init__(self, lengths: dict[str, int]):
        self.qk = {rid: {layer: random_qk(t, seed=hash((rid, layer)) % 1000) for layer in LAYERS}
                   for rid, t in lengths.items()}
        self.cache = {layer: torch.zeros(NUM_BLOCKS, BLOCK, NUM_KV_HEADS, 16) for layer in LAYERS}
        free = torch.randperm(NUM_BLOCKS, generator=torch.Generator().manual_seed(0)).tolist()
        self.table = torch.zeros(len(lengths), NUM_BLOCKS // len(lengths), dtype=torch.long)
        self.row = {}
        for r, (rid, t) in enumerate(lengths.items()):
            self.row[rid] = r
            n = -(-t // BLOCK)
            self.table[r, :n] = torch.tensor([free.pop() for _ in range(n)])

    def step(self, driver: CaptureDriver, chunks: dict[str, tuple[int, int]], corrupt=False,
             bad_row: str | None = None):
        """Compute ``{rid: (first, n)}`` in one flattened step; the requests it finished
        (``bad_row``: that request's metadata names a block-table row that does not exist)."""
        rows, offset = [], 0
        for rid, (first, n) in chunks.items():
            rows.append(StepRow(rid, first, n, offset, 99 if rid == bad_row else self.row[rid]))
            offset += n
        driver.begin_step(rows)
        for layer in LAYERS:
            qs, ks = [], []
            for rid, (first, n) in chunks.items():
                q, k = self.qk[rid][layer]
                qs.append(q[:, first:first + n].transpose(0, 1))
                ks.append(k[:, first:first + n].transpose(0, 1))
                for p in range(first, first + n):       # the engine writes its keys first
                    block = self.table[self.row[rid], p // BLOCK]
                    self.cache[layer][block, p % BLOCK] = k[:, p] + (1.0 if corrupt else 0.0)
            driver.on_layer(LayerInput(layer, torch.cat(qs), torch.cat(ks), self.cache[layer],
                                       self.table, SCALE))
        return {t.request_id: t for t in driver.end_step()}

    def expected(self, rid: str, span: int) -> torch.Tensor:
        t = self.qk[rid][0][0].shape[1]
        return torch.stack([dense_span_rows(*self.qk[rid][layer], span)[head] / (t - span)
                            for layer, head in HEADS])


def ordered(tracked) -> torch.Tensor:
    res = tracked.result()
    assert res.error is None, res.error
    out = torch.empty_like(res.rows)
    out[res.index] = res.rows
    return out


def test_batched_chunked_requests_equal_dense_attention():
    engine, driver = FakeEngine({"a": 40, "b": 23, "plain": 10}), CaptureDriver()
    driver.admit("a", RequestSpec(30, HEADS), 40, SHAPE)
    driver.admit("b", RequestSpec(5, HEADS), 23, SHAPE)
    assert engine.step(driver, {"a": (0, 32), "b": (0, 12), "plain": (0, 10)}) == {}
    done = engine.step(driver, {"a": (32, 8), "b": (12, 11)})
    assert set(done) == {"a", "b"} and not driver.requests
    torch.testing.assert_close(ordered(done["a"]), engine.expected("a", 30), atol=1e-6, rtol=0)
    torch.testing.assert_close(ordered(done["b"]), engine.expected("b", 5), atol=1e-6, rtol=0)
    assert done["a"].seconds > 0


def test_keys_that_do_not_read_back_fail_the_request():
    engine, driver = FakeEngine({"a": 12}), CaptureDriver()
    driver.admit("a", RequestSpec(4, HEADS), 12, SHAPE)
    done = engine.step(driver, {"a": (0, 12)}, corrupt=True)
    assert "self-check failed" in done["a"].result().error


def test_one_requests_failure_stays_its_own():
    engine, driver = FakeEngine({"a": 12, "b": 12}), CaptureDriver()
    driver.admit("a", RequestSpec(4, HEADS), 12, SHAPE)
    driver.admit("b", RequestSpec(4, HEADS), 12, SHAPE)
    done = engine.step(driver, {"a": (0, 12), "b": (0, 12)}, bad_row="a")
    assert "IndexError" in done["a"].result().error
    torch.testing.assert_close(ordered(done["b"]), engine.expected("b", 4), atol=1e-6, rtol=0)


def test_a_bad_spec_is_reported_at_the_requests_last_token():
    engine, driver = FakeEngine({"a": 12, "b": 12}), CaptureDriver()
    driver.admit("a", RequestSpec(4, ((9, 0),)), 12, SHAPE)
    spec, error = read_spec({"qrhead": "{not json"})
    assert spec is None and error.startswith("malformed qrhead spec")
    driver.admit("b", spec, 12, SHAPE, error)
    assert engine.step(driver, {"a": (0, 8), "b": (0, 8)}) == {}
    done = engine.step(driver, {"a": (8, 4), "b": (8, 4)})
    assert "do not exist in this model" in done["a"].result().error
    assert "malformed qrhead spec" in done["b"].result().error


def test_one_validation_for_every_engine():
    def err(span=4, heads=HEADS, **shape):
        kw = dict(num_heads=NUM_HEADS, num_kv_heads=NUM_KV_HEADS, num_layers=4)
        return spec_error(RequestSpec(span, tuple(heads)), 12, ModelShape(**{**kw, **shape}))
    assert err() is None
    assert "outside the prompt" in err(span=12)
    assert "do not exist" in err(heads=[(0, NUM_HEADS)]) and "do not exist" in err(heads=[])
    assert "lie beyond this score-only engine's last layer 1" in err(last_layer=1)
    assert "no such attention layer" in err(layers=frozenset({0, 1}))


def test_ordinary_and_forgotten_requests_cost_nothing():
    engine, driver = FakeEngine({"a": 12, "plain": 12}), CaptureDriver()
    driver.admit("a", RequestSpec(4, HEADS), 12, SHAPE)
    driver.forget(["a"])                               # aborted before its first step
    assert engine.step(driver, {"a": (0, 12), "plain": (0, 12)}) == {}
    assert not driver.capturing and not driver.requests
