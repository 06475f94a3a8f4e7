"""The CPU defaults (issue 20): `dtype auto` picks bf16 on a CPU that multiplies bf16 natively (AVX-512
BF16 or AMX-BF16), else fp32 (measured: eval/BENCHMARKS.md); compile auto stays off on a CPU. Where bf16
becomes the default its greedy tokens must be fp32's: checked at temperature 0 on a checkpoint whose
output is forced (tests/forced.py), so the check never rests on what a random model writes; the
difference on random real-shape weights is measured by python -m fim_lsp.bench.dtype_agreement."""
from __future__ import annotations

import math

import pytest
import torch

from fim_lsp.engine import cpu_features, loading
from fim_lsp.engine.config import EngineConfig, compile_enabled
from fim_lsp.engine.ensemble import Engine, FimRequest

XEON = "processor\t: 0\nflags\t\t: fpu avx2 fma avx512f avx512_bf16 amx_tile amx_bf16 amx_int8\n\nprocessor\t: 1\n"
EPYC = "processor\t: 0\nflags\t\t: fpu avx2 fma avx512f avx512bw avx512_vnni avx512_bf16\n"
LAPTOP = "processor\t: 0\nflags\t\t: fpu avx2 fma f16c\n"


@pytest.mark.parametrize("cpuinfo, want", [(XEON, torch.bfloat16), (EPYC, torch.bfloat16), (LAPTOP, torch.float32),
                                           ("", torch.float32)], ids=["amx", "avx512-bf16", "avx2", "unknown"])
def test_dtype_auto_on_a_cpu_is_bf16_where_it_multiplies_bf16(monkeypatch, cpuinfo, want):
    monkeypatch.setattr(loading, "cpu_flags", lambda: cpu_features.parse_flags(cpuinfo))
    assert loading.resolve_dtype("auto", torch.device("cpu")) == want
    assert loading.resolve_dtype("float32", torch.device("cpu")) == torch.float32  # asked for: kept
    assert not compile_enabled(EngineConfig(), "cpu")


def test_bf16_writes_fp32s_greedy_tokens(forced_lines):
    """Qwen alone at temperature 0, bf16 against fp32: the same tokens, and perplexities within bf16's
    rounding (its 8-bit mantissa: ~0.4% per value)."""
    reqs = [FimRequest("def f(x):\n    return ", "\n"), FimRequest("x = ", "\n", single_line=True)]
    out = {}
    for dtype in ("float32", "bfloat16"):
        engine = Engine(EngineConfig(ar_model=str(forced_lines / "ar"), models="qwen", device="cpu", dtype=dtype,
                                     temperature=0.0, max_new_tokens=8))
        out[dtype] = engine.complete_batch(reqs)
        assert engine.ar.model.dtype == getattr(torch, dtype)
    for a, b in zip(out["float32"], out["bfloat16"]):
        assert a.text == b.text and a.text.startswith("x=1\n")
        assert math.isclose(a.winner.perplexity, b.winner.perplexity, rel_tol=0.05)
        assert b.winner.token_logprobs == pytest.approx(a.winner.token_logprobs, abs=0.5)
