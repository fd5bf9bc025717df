"""The transformers reference port against plain eager attention, on the real bundled models.

The port never materialises attention matrices; here we check it against the one thing that
does: eager attention with ``output_attentions=True`` on short real HotpotQA prompts. Both the
real pass and the null pass (cache cropped to the query start, only the null suffix fed) must
equal eager attention on the full prompt to 1e-5 in fp32.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch
from transformers import AutoModelForCausalLM

from qrhead_vllm.backends import MassRequest
from qrhead_vllm.core import Passage, build_scoring_prompts, truncate_words
from qrhead_vllm.models import prompt_template
from qrhead_vllm.ranker import QRHeadRanker

TOL = 1e-5
# SmolLM2: 9 query heads share 3 KV heads; these heads read KV heads 0, 1 and 2.
SMOLLM2_HEADS = ((0, 0), (3, 4), (9, 8), (9, 2))
# Gemma 3 270M: layers 0-4 are sliding-window (512), layer 5 is global; 4 q heads, 1 KV head.
GEMMA3_HEADS = ((0, 1), (4, 3), (5, 0), (5, 2))


def _prompts(backend, example, max_words=None, min_tokens=0, max_docs=10):
    """Real and null scoring prompts over the fewest leading documents reaching ``min_tokens``."""
    template = prompt_template(backend.hf_config, backend.tokenizer)
    for n in range(1, max_docs + 1):
        passages = [Passage(truncate_words(d.text, max_words), d.title)
                    for d in example.documents[:n]]
        real, null = build_scoring_prompts(backend.tokenizer, template, example.query, passages)
        if real.num_tokens >= min_tokens:
            break
    return real, null


def _eager_model(path, num_layers):
    """The same weights with eager attention, cut after ``num_layers`` layers (earlier layers'
    attention does not depend on later ones; this keeps the test cheap)."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    model.model.layers = model.model.layers[:num_layers]
    return model


@torch.inference_mode()
def _eager_mass(model, prompt, heads):
    """Mean over the query-span rows of each head's attention probabilities → [len(heads), T]."""
    out = model(torch.tensor([prompt.token_ids]), output_attentions=True, use_cache=False)
    return torch.stack([out.attentions[l][0, h, prompt.query_start:].mean(0) for l, h in heads])


def _check_against_eager(backend, real, null, heads):
    mass = backend.attention_mass([MassRequest(real, null, heads)])[0]
    eager = _eager_model(backend.model.name_or_path, max(l for l, _ in heads) + 1)
    want_real, want_null = _eager_mass(eager, real, heads), _eager_mass(eager, null, heads)
    real_diff = (mass.real - want_real).abs().max().item()
    null_diff = (mass.null - want_null).abs().max().item()
    print(f"{backend.facts.model_id}: {real.num_tokens} tokens, max |diff| real "
          f"{real_diff:.2e}, null {null_diff:.2e}")
    assert real_diff <= TOL and null_diff <= TOL
    return mass


def test_smollm2_matches_eager_attention(smollm2_backend, hotpotqa_split):
    real, null = _prompts(smollm2_backend, hotpotqa_split[1][0], max_words=50, min_tokens=300)
    assert 300 <= real.num_tokens <= 500
    _check_against_eager(smollm2_backend, real, null, SMOLLM2_HEADS)


def test_gemma3_matches_eager_attention_beyond_sliding_window(gemma3_backend, hotpotqa_split):
    cfg = gemma3_backend.hf_config
    window = cfg.sliding_window
    heads_types = {cfg.layer_types[l] for l, _ in GEMMA3_HEADS}
    assert heads_types == {"sliding_attention", "full_attention"}
    # Longer than the window, so the query rows of sliding layers cannot see the first tokens.
    real, null = _prompts(gemma3_backend, hotpotqa_split[1][0], max_words=60,
                          min_tokens=window + 64)
    assert real.query_start > window + 16
    mass = _check_against_eager(gemma3_backend, real, null, GEMMA3_HEADS)
    # The window is really exercised: the first query row at position q0 sees keys from
    # q0 - window + 1 on, so a sliding head puts no mass before that; a global head does (BOS).
    unseen = real.query_start - window + 1
    sliding = [i for i, (l, _) in enumerate(GEMMA3_HEADS) if cfg.layer_types[l] != "full_attention"]
    full = [i for i, (l, _) in enumerate(GEMMA3_HEADS) if cfg.layer_types[l] == "full_attention"]
    assert mass.real[sliding, :unseen].abs().max() == 0
    assert (mass.real[full, :unseen].sum(-1) > 1e-3).all()


def test_early_exit_gives_identical_mass(smollm2_backend, hotpotqa_split):
    real, null = _prompts(smollm2_backend, hotpotqa_split[1][1], max_words=30, min_tokens=200)
    request = MassRequest(real, null, ((2, 1), (7, 5), (7, 0)))
    early = smollm2_backend.attention_mass([request])[0]
    smollm2_backend.early_exit = False
    try:
        full = smollm2_backend.attention_mass([request])[0]
    finally:
        smollm2_backend.early_exit = True
    assert torch.equal(early.real, full.real) and torch.equal(early.null, full.null)


def test_all_heads_mode_gives_finite_scores(smollm2_backend, hotpotqa_split):
    example = hotpotqa_split[1][2]
    ranker = QRHeadRanker("smollm2-135m", heads="all", backend=smollm2_backend, max_words=30)
    facts = smollm2_backend.facts
    assert len(ranker.head_pairs) == facts.num_layers * facts.num_heads
    result = ranker.rank(example.query, list(example.documents[:5]), per_head=True)
    assert len(result) == 5
    assert all(math.isfinite(r.score) for r in result)
    assert torch.isfinite(torch.tensor(result.head_scores)).all()
    assert len(result.head_scores) == len(ranker.head_pairs)


def chance_mrr(num_docs: int, num_gold: int) -> Fraction:
    """Exact expected reciprocal rank of the first gold doc in a uniformly random order:
    P(first gold at rank k) = C(n-k, g-1) / C(n, g)."""
    total = math.comb(num_docs, num_gold)
    return sum((Fraction(math.comb(num_docs - k, num_gold - 1), total) / k
                for k in range(1, num_docs - num_gold + 2)), Fraction(0))


def test_chance_mrr_matches_enumeration():
    brute = [Fraction(1, min(pos) + 1) for pos in itertools.combinations(range(10), 2)]
    assert chance_mrr(10, 2) == sum(brute) / len(brute)


@pytest.mark.parametrize("heads", ["all", None], ids=["icr-all-heads", "detected-heads"])
def test_ranking_puts_gold_above_chance(smollm2_backend, hotpotqa_split, heads):
    """SmolLM2 on 10 evaluation-half examples (heads are detected on the other half), every
    head (ICR) and the shipped detected heads; documents cut to 40 words to keep it short."""
    examples = hotpotqa_split[1][:10]
    ranker = QRHeadRanker("smollm2-135m", heads=heads, backend=smollm2_backend, max_words=40)
    reciprocal, chance = [], []
    for ex in examples:
        result = ranker.rank(ex.query, list(ex.documents))
        first_gold = min(r.rank for r in result if r.doc_id in ex.gold_ids)
        reciprocal.append(1 / first_gold)
        chance.append(chance_mrr(len(ex.documents), len(ex.gold_ids)))
    mrr, chance_value = sum(reciprocal) / len(reciprocal), float(sum(chance) / len(chance))
    print(f"SmolLM2 heads={heads or 'detected'}: MRR {mrr:.3f} vs chance {chance_value:.3f} "
          f"on {len(examples)} examples")
    assert mrr > chance_value


# --- Gemma 3 270M from the bundled GGUF ---------------------------------------------------
# transformers' GGUF tokenizer conversion ignores `tokenizer.ggml.add_bos_token`; without <bos>
# Gemma greedy-decodes "The capital of France is France. The The The ...". models.py makes the
# saved tokenizer follow the GGUF flag (and repairs directories written before the fix).

def _greedy(backend, prompt: str, new_tokens: int = 10) -> str:
    ids = backend.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = backend.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=new_tokens)
    return backend.tokenizer.decode(out[0, ids.shape[1]:])


def test_gemma3_tokenizer_adds_bos(gemma3_backend):
    tok = gemma3_backend.tokenizer
    assert tok("Hello").input_ids[0] == tok.bos_token_id == 2


def test_gemma3_generates_sensible_text(gemma3_backend):
    assert "Paris" in _greedy(gemma3_backend, "The capital city of France is called")
    assert "oxygen" in _greedy(gemma3_backend, "Water is made of hydrogen and")
    words = _greedy(gemma3_backend, "The capital of France is", 12).split()
    assert len(set(words)) >= len(words) / 2, words  # not "The The The The ..."


def test_stale_gemma3_directory_gets_its_bos_back(gemma3_backend, tmp_path, monkeypatch):
    from qrhead_vllm import models

    spec = models.BUNDLED["gemma3-270m"]
    gguf = models._gguf_file(spec)                  # the real file, before QRHEAD_CACHE moves
    stale = tmp_path / "models" / spec.name
    tok = gemma3_backend.tokenizer.__class__.from_pretrained(gemma3_backend.model.name_or_path)
    tok.add_bos_token = False                      # what the format-1 directories hold
    tok.save_pretrained(stale)
    gemma3_backend.hf_config.to_json_file(stale / "config.json")
    monkeypatch.setenv("QRHEAD_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_gguf_file", lambda _spec: gguf)
    assert models.ensure_dequantised(spec) == stale
    repaired = tok.__class__.from_pretrained(stale)
    assert repaired("Hello").input_ids[0] == repaired.bos_token_id
    assert models._cache_format(stale) == models.CACHE_FORMAT
