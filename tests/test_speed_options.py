"""The editor profile's speed options against the exact path, on tiny checkpoints."""
from __future__ import annotations

import math

import pytest
import torch

from fim_lsp.engine.config import EngineConfig, effective
from fim_lsp.engine.bidirectional import bidirectional_logits
from fim_lsp.engine.diffusion import DiffusionParams, mdm_sample
from fim_lsp.engine.dual_cache import dual_cache_logits
from fim_lsp.engine.ensemble import Engine, FimRequest
from fim_lsp.engine.loading import load_model, mask_token_id

from test_diffusion import MASK, infill, scripted_logits

PREFIX = "def area(w, h):\n    return "
SUFFIX = "\n\nprint(area(2, 3))\n"


@pytest.fixture(scope="module")
def dllm(tiny_models):
    return load_model(str(tiny_models / "dllm"), "dllm", torch.device("cpu"), torch.float32)


def padded_batch(dllm):
    mid = mask_token_id(dllm.tokenizer)
    x = torch.randint(0, 900, (2, 40), generator=torch.Generator().manual_seed(0))
    x[0, 10:20] = mid
    x[1, 12:18] = mid
    valid = torch.ones_like(x, dtype=torch.bool)
    valid[1, 35:] = False  # right padding
    return x, valid, mid


def test_dual_cache_step_equals_full_pass_on_unchanged_input(dllm):
    x, valid, mid = padded_batch(dllm)
    rows = torch.arange(9, 19)
    exact = bidirectional_logits(dllm, valid, [mid])(x, rows)
    fn = dual_cache_logits(dllm, valid, x == mid, [mid], refresh_every=100)
    refreshed, cached = fn(x, rows), fn(x, rows)
    ok = torch.isfinite(exact)
    assert torch.equal(refreshed, exact)
    assert (cached - exact)[ok].abs().max() < 1e-5
    # once the hole changes, the cached prefix/suffix keys are stale: an approximation
    x2 = x.clone()
    x2[0, 10:15] = 5
    stale = fn(x2, rows)
    assert (stale - bidirectional_logits(dllm, valid, [mid])(x2, rows))[ok].abs().max() > 1e-4


def test_dual_cache_refreshed_every_step_is_the_exact_path(dllm):
    mid = mask_token_id(dllm.tokenizer)
    reqs = [(PREFIX, SUFFIX, 8), ("import os\n", "\nprint(os.sep)\n", 5)]
    exact = infill(dllm, mid, reqs, DiffusionParams(steps=8, temperature=0.0))
    cached = infill(dllm, mid, reqs, DiffusionParams(steps=8, temperature=0.0, cache_refresh=1))
    assert [g.token_ids for g in cached] == [g.token_ids for g in exact]


def test_threshold_reveals_confident_positions_early():
    x = torch.tensor([[1, MASK, MASK, MASK, MASK, 2]])
    sure = {p: (7 + p, 0.97) for p in range(1, 5)}  # tokens 8..11, never the mask id 7
    script = [sure] * 8
    slow = mdm_sample(x, MASK, scripted_logits(script, 6), DiffusionParams(steps=8, alg="p2", temperature=0.0,
                                                                           top_p=None))
    fast = mdm_sample(x, MASK, scripted_logits(script, 6), DiffusionParams(steps=8, alg="p2", temperature=0.0,
                                                                           top_p=None, threshold=0.9))
    assert slow.total_passes == 7  # floor(4 * (1 - (i+1)/8)) reaches 0 at i = 6
    assert fast.total_passes == 1 and torch.equal(fast.tokens, slow.tokens)
    top = mdm_sample(x, MASK, scripted_logits(script, 6), DiffusionParams(steps=8, alg="maskgit_plus",
                                                                          temperature=0.0, top_p=None, threshold=0.9))
    assert top.total_passes == 1


def test_steps_per_token_caps_the_passes(dllm):
    mid = mask_token_id(dllm.tokenizer)
    out = infill(dllm, mid, [(PREFIX, SUFFIX, 16)],
                           DiffusionParams(steps=64, temperature=0.0, steps_per_token=0.5))[0]
    assert out.forward_passes == 8


def tiny_engine(tiny_models, **kw) -> Engine:
    base = dict(ar_model=str(tiny_models / "ar"), dllm_model=str(tiny_models / "dllm"), device="cpu",
                max_new_tokens=8, steps=16, temperature=0.0)
    return Engine(EngineConfig(**{**base, **kw}))


def test_score_reuse_equals_full_scoring(tiny_models):
    reqs = [FimRequest(PREFIX, SUFFIX, 6), FimRequest("x = ", "\n", 3)]
    fast = tiny_engine(tiny_models, score_reuse=True).complete_batch(reqs)
    full = tiny_engine(tiny_models, score_reuse=False).complete_batch(reqs)
    for a, b in zip(fast, full):
        assert [c.text for c in a.candidates] == [c.text for c in b.candidates]
        for ca, cb in zip(a.candidates, b.candidates):
            assert ca.tokens == cb.tokens
            assert math.isclose(ca.perplexity, cb.perplexity, rel_tol=1e-5)
        assert a.winner.text == b.winner.text


def test_editor_profile(tiny_models):
    cfg = effective(EngineConfig(profile="editor"))
    assert cfg.dllm_cache_refresh > 0 and cfg.dllm_threshold and cfg.dllm_steps_per_token
    # what a user sets explicitly wins over the profile
    assert effective(EngineConfig(profile="editor", dllm_cache_refresh=2)).dllm_cache_refresh == 2
    out = tiny_engine(tiny_models, profile="editor", steps=64).complete(PREFIX, SUFFIX, dllm_length=16)
    dllm = [c for c in out.candidates if c.model == "dllm"]
    assert dllm and all(c.forward_passes <= 4 for c in dllm)  # ceil(16 * 0.25)


def test_a_lone_candidate_is_scored_without_a_scoring_pass(forced_lines, monkeypatch):
    """Qwen alone, writing "x=1\nx=1..." (a forced checkpoint whose tokens re-encode to themselves), its
    middles cut by the budget (8 tokens) and by the single-line newline: the perplexity comes from the
    generation's own log-probs and one decode step for the end token, with no scoring pass, and equals the
    full scoring pass's (scoreReuse off) to 1e-5."""
    from fim_lsp.engine import ensemble, qwen_runner

    reqs = [FimRequest(PREFIX, SUFFIX), FimRequest("x = ", "\n", single_line=True)]
    passes: list[int] = []
    score, full = qwen_runner.QwenRunner.score, ensemble.score_batch
    monkeypatch.setattr(qwen_runner.QwenRunner, "score",
                        lambda self, prompt, items: passes.append(len(items)) or score(self, prompt, items))
    monkeypatch.setattr(ensemble, "score_batch", lambda lm, items, mode: passes.append(len(items)) or full(lm, items, mode))
    out = {}
    for reuse in (True, False):
        passes.clear()
        out[reuse] = tiny_engine(forced_lines, models="qwen", score_reuse=reuse).complete_batch(reqs)
        assert sum(passes) == (0 if reuse else len(reqs))  # the full pass scores both when asked to
    texts = [[c.text for c in comp.candidates] for comp in out[True]]
    assert texts == [["x=1\nx=1\n"], ["x=1\n"]]
    for lone, scored in zip(out[True], out[False]):
        (a,), (b,) = lone.candidates, scored.candidates
        assert a.text == b.text and a.tokens == b.tokens
        assert a.token_logprobs[-1] < -10  # the end token is unlikely there: a shortcut that dropped it shows
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-5)
        assert math.isclose(a.perplexity, b.perplexity, rel_tol=1e-5)
