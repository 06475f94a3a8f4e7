"""Qwen's decode step on int8 copies of its weights (fim_lsp/engine/int8_weights.py), the CPU default:
the int8 product against the exact one, the widths its kernel cannot take, the real forward at both
precisions on the tiny checkpoint, and in the engine: the same greedy tokens as the exact decode on a
forced checkpoint, and a Qwen candidate that is ranked against another scored by the exact pass."""
from __future__ import annotations

import math

import pytest
import torch

from fim_lsp.engine import int8_weights
from fim_lsp.engine.config import EngineConfig, int8_decode_enabled
from fim_lsp.engine.ensemble import MODEL_FIELDS, Engine
from fim_lsp.engine.loading import load_model
from fim_lsp.engine.requests import FimRequest
from fim_lsp.engine.static_model import StaticQwen2

CPU = torch.device("cpu")
needs_kernel = pytest.mark.skipif(not int8_weights.supported(CPU), reason="no vectorized int8 kernel on this CPU")


@needs_kernel
@pytest.mark.parametrize("k, n, m", [(16, 5, 1), (64, 48, 3), (896, 130, 1), (4864, 96, 2)])
def test_int8_product_is_near_the_exact_one(k, n, m):
    torch.manual_seed(k + n + m)
    linear = torch.nn.Linear(k, n, bias=True)
    x = torch.randn(2, m, k)[1]  # a view at an offset: the kernel's aligned loads must not see it
    q = int8_weights.quantize(linear)
    assert isinstance(q, int8_weights.Int8Linear) and q.weight.dtype == torch.int8
    want, got = linear(x), q(x)
    assert got.dtype == x.dtype and got.shape == want.shape
    assert (got - want).abs().max() <= 0.02 * want.abs().max()  # int8 rows, bf16 activations
    assert not torch.equal(got, want)  # it is the int8 product, not the exact one


@needs_kernel
def test_int8_product_is_exact_where_the_weights_are_integers():
    """Rows whose largest entry is 127 get scale 1: the int8 copy is the weight itself, and with inputs
    exact in bf16 only the bf16 output rounding is left."""
    w = torch.randint(-127, 128, (8, 32)).float()
    w[:, 0] = 127
    linear = torch.nn.Linear(32, 8, bias=False)
    linear.weight.data = w
    x = torch.randint(-4, 5, (1, 32)).float()
    assert torch.equal(int8_weights.quantize(linear)(x), linear(x).bfloat16().float())


def test_widths_the_kernel_cannot_take_stay_exact():
    """torch's x86 kernel reads K in steps of 16 with no tail: a width of 8 gave sums off by 1e14 and
    other widths crashed the process, so such a layer keeps its exact module."""
    for k in (8, 12, 24, 900):
        linear = torch.nn.Linear(k, 4)
        assert int8_weights.quantize(linear) is linear


def test_where_the_kernel_is_vectorized():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert int8_weights.supported(cpu, frozenset({"avx512f"}), "x86_64")
    assert int8_weights.supported(cpu, frozenset({"avx2", "fma"}), "x86_64")
    assert int8_weights.supported(cpu, frozenset(), "aarch64")
    assert not int8_weights.supported(cpu, frozenset({"sse4_2"}), "x86_64")  # a scalar loop there
    assert not int8_weights.supported(cuda, frozenset({"avx512f"}), "x86_64")


def test_decode_weights_setting():
    assert int8_decode_enabled(EngineConfig(), "cpu") and not int8_decode_enabled(EngineConfig(), "cuda")
    assert not int8_decode_enabled(EngineConfig(decode_weights="exact"), "cpu")
    assert "decode_weights" in MODEL_FIELDS  # a change reloads: the copies are made at load
    with pytest.raises(ValueError, match="decodeWeights"):
        EngineConfig(decode_weights="int4").validate()


@needs_kernel
def test_int8_forward_on_the_tiny_checkpoint(tiny_models):
    """The one-token pass the decode step runs, at both precisions on the same cache: near (the
    logits' spread is what sampling sees), not equal (the int8 copies are what it multiplies by)."""
    lm = load_model(str(tiny_models / "ar"), "ar", CPU, torch.float32)
    net = StaticQwen2(lm.model, int8=True)
    assert isinstance(net.int8[0].gate, int8_weights.Int8Linear) and isinstance(net.int8_head, int8_weights.Int8Linear)
    ids = torch.randint(0, 200, (1, 12))
    logits = {}
    with torch.inference_mode():
        for int8 in (False, True):
            cache = net.new_cache(1, 16)
            mask = torch.ones(12, 12, dtype=torch.bool).tril()[None, None]
            net.forward(ids[:, :11], torch.arange(11)[None], mask[:, :, :11, :11], cache,
                        write_at=torch.arange(11), kv_len=11)
            logits[int8] = net.forward(ids[:, 11:], torch.tensor([[11]]), mask[:, :, 11:, :12], cache,
                                       write_at=torch.tensor([11]), kv_len=12, int8=int8)[0, -1]
    exact, approx = logits[False], logits[True]
    spread = exact.max() - exact.min()
    assert (approx - exact).abs().max() <= 0.05 * spread
    assert not torch.equal(approx, exact)
    with pytest.raises(ValueError, match="without int8"):
        StaticQwen2(lm.model).forward(ids[:, :1], torch.tensor([[0]]), torch.ones(1, 1, 1, 1, dtype=torch.bool),
                                      int8=True)


@needs_kernel
def test_int8_decode_writes_the_exact_decodes_greedy_tokens(forced_lines_wide):
    """Qwen alone at temperature 0 on a forced checkpoint wide enough to be quantized: the same tokens
    as the exact decode step, and log-probs within int8's rounding."""
    reqs = [FimRequest("def f(x):\n    return ", "\n"), FimRequest("x = ", "\n", single_line=True)]
    out = {}
    for weights in ("exact", "int8"):
        engine = Engine(EngineConfig(ar_model=str(forced_lines_wide / "ar"), models="qwen", device="cpu",
                                     temperature=0.0, max_new_tokens=8, decode_weights=weights))
        out[weights] = engine.complete_batch(reqs)
        assert engine.qwen.int8_decode == (weights == "int8")
        assert isinstance(engine.qwen.net.int8_head if weights == "int8" else engine.qwen.net.head,
                          int8_weights.Int8Linear if weights == "int8" else torch.nn.Linear)
    for a, b in zip(out["exact"], out["int8"]):
        assert a.winner.text == b.winner.text and a.winner.text.startswith("x=1\n")
        assert b.winner.token_logprobs == pytest.approx(a.winner.token_logprobs, abs=0.05)
        assert math.isclose(a.winner.perplexity, b.winner.perplexity, rel_tol=0.05)


@needs_kernel
def test_a_ranked_qwen_candidate_is_scored_by_the_exact_pass(tiny_models, monkeypatch):
    """Beside the diffusion model's candidates, Qwen's own int8 log-probs would rank it on different
    arithmetic from theirs: with int8 decode its middle rides in the scoring pass; with the exact decode
    it does not (its generation log-probs are the scorer's numbers)."""
    from fim_lsp.engine import qwen_runner

    scored: list[str] = []
    score = qwen_runner.QwenRunner.score
    monkeypatch.setattr(qwen_runner.QwenRunner, "score",
                        lambda self, prompt, items: scored.extend(t for _, t in items) or score(self, prompt, items))
    base = dict(ar_model=str(tiny_models / "ar"), dllm_model=str(tiny_models / "dllm"), device="cpu",
                max_new_tokens=6, steps=4, dllm_length=4, temperature=0.0)
    for weights in ("int8", "exact"):
        scored.clear()
        out = Engine(EngineConfig(**base, decode_weights=weights)).complete("def add(a, b):\n    return ", "\n")
        qwen = next(c for c in out.candidates if c.model == "qwen")
        others = sum(c.text == qwen.text for c in out.candidates if c.model != "qwen")
        assert len(out.candidates) > 1
        assert scored.count(qwen.text) - others == (weights == "int8"), (weights, qwen.text, scored)
