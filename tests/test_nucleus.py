"""The top-p cut without a sort (engine/nucleus.py) against the rule stated with a sort, ties included.

Every row is built by hand over the real vocabulary size, with probabilities whose cumulative sums pass
top_p far from any rounding boundary, so the kept set is known in advance: each case asserts the count
of kept tokens as well as equality with the sorted rule, and which of the two ways (the top-k
candidates, or the radix select they fall back to) decided it."""
from __future__ import annotations

import pytest
import torch

from fim_lsp.engine import sampling
from fim_lsp.engine.nucleus import candidates_floor, nucleus_floor, radix_floor, sorted_floor

V = 151936


def row(groups: list[tuple[int, float]]) -> torch.Tensor:
    """Logits [V] of a distribution made of groups (count, probability each); the remaining tokens share
    what is left equally. Tokens of a group are tied exactly (equal logits); the groups are shuffled
    over the vocabulary so that no rule can lean on token order."""
    probs = torch.empty(V, dtype=torch.float64)
    at = 0
    for count, p in groups:
        probs[at:at + count] = p
        at += count
    probs[at:] = (1 - sum(c * p for c, p in groups)) / (V - at)
    order = torch.randperm(V, generator=torch.Generator().manual_seed(len(groups)))
    return probs.log().float()[order]


def descending(n: int, mass: float, kept: int) -> tuple[list[tuple[int, float]], float]:
    """n distinct probabilities falling linearly, holding `mass`, and the top_p halfway between the
    sums of the first kept - 1 and the first kept of them: the cut at the kept-th token."""
    c = mass / (n * (n + 1) / 2)
    ps = [(n - i) * c for i in range(n)]
    return [(1, p) for p in ps], (sum(ps[:kept - 1]) + sum(ps[:kept])) / 2


DISTINCT, DISTINCT_TOP_P = descending(1000, 0.8, 600)

# name -> (logits, top_p, tokens kept, decided by the candidates)
CASES = {
    # sums 0.5, 0.7, 0.85, 0.95: passed at the third token
    "peaked": (row([(1, 0.5), (1, 0.2), (1, 0.15), (1, 0.1)]), 0.8, 3, True),
    # 0.3, then 50 tokens tied at 0.01: passed at the 21st tie, all 50 are kept (a sort keeps 21)
    "ties at the cut": (row([(1, 0.3), (50, 0.01)]), 0.505, 51, True),
    # 0.3, then 400 ties at 0.001: passed at the 201st tie, inside the candidates; the ties past them kept too
    "ties past the candidates": (row([(1, 0.3), (400, 0.001)]), 0.5005, 401, True),
    # 100 tokens at 0.002, 1000 ties at 0.0005: passed at the 801st tie, past the candidates
    "ties at the cut, past the candidates": (row([(100, 0.002), (1000, 0.0005)]), 0.60025, 1100, False),
    # 1000 distinct probabilities: the cut at the 600th, past the candidates
    "distinct, past the candidates": (row(DISTINCT), DISTINCT_TOP_P, 600, False),
    # every token equally likely: the cut at 95% of the vocabulary falls among ties, so all are kept
    "flat": (row([]), 0.95, V, False),
    # top_p beyond what the float32 sums reach: keep everything
    "never passed": (row([(1, 0.5)]), 1 - 1e-9, V, False),
}


def probs_of(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=-1)[None]


def python_floor(probs: list[float], top_p: float) -> float:
    """The rule, transcribed: walk the probabilities from the most likely, the first whose running
    sum passes top_p is the floor."""
    total = 0.0
    for p in sorted(probs, reverse=True):
        total += p
        if total > top_p:
            return p
    return 0.0


@pytest.mark.parametrize("probs,top_p", [([0.1, 0.4, 0.2, 0.3], 0.5), ([0.1, 0.4, 0.2, 0.3], 0.75),
                                         ([0.25, 0.25, 0.25, 0.25], 0.3), ([0.4, 0.6], 0.99999)])
def test_sorted_floor_is_the_rule(probs, top_p):
    assert sorted_floor(torch.tensor([probs]), top_p).item() == pytest.approx(python_floor(probs, top_p))


@pytest.mark.parametrize("name", CASES)
def test_floor_without_a_sort_equals_the_sorted_one(name):
    logits, top_p, kept, by_candidates = CASES[name]
    probs = probs_of(logits)
    want = sorted_floor(probs, top_p)
    assert int((probs >= want).sum()) == kept
    assert bool(candidates_floor(probs, top_p)[1].all()) == by_candidates
    assert torch.equal(nucleus_floor(probs, top_p), want)
    assert torch.equal(nucleus_floor(probs, top_p, branch_free=True), want)
    assert torch.equal(radix_floor(probs, top_p), want)


@pytest.mark.parametrize("name", CASES)
def test_the_filter_keeps_every_tie_at_the_cut(name):
    logits, top_p, kept, _ = CASES[name]
    low = torch.finfo(logits.dtype).min
    for branch_free in (False, True):
        assert int((sampling.filter_logits(logits[None], top_p, None, branch_free) > low).sum()) == kept


def test_a_batch_mixes_both_ways_row_by_row():
    """Rows the candidates decide and rows that fall back, in one call, in a [1, rows, V] batch."""
    names = list(CASES)
    probs = torch.stack([probs_of(CASES[n][0])[0] for n in names])
    tops = {CASES[n][1] for n in names}
    for top_p in tops:
        want = sorted_floor(probs, top_p)
        got = nucleus_floor(probs[None], top_p)
        assert got.shape == (1, len(names), 1)
        assert torch.equal(got.reshape(-1, 1), want)
    assert 0 < sum(bool(candidates_floor(probs, 0.5)[1][i]) for i in range(len(names))) < len(names)


def test_many_rows_go_through_the_radix_select_in_parts():
    """More rows than one histogram pass holds (the diffusion sampler's hole positions, batched)."""
    rows = [CASES["distinct, past the candidates"][0], CASES["ties at the cut, past the candidates"][0]] * 35
    probs = torch.softmax(torch.stack(rows), dim=-1)
    assert torch.equal(radix_floor(probs, DISTINCT_TOP_P), sorted_floor(probs, DISTINCT_TOP_P))


def sorted_filter(logits: torch.Tensor, top_p: float | None, top_k: int | None,
                  monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
    """The engine's filter with the floor found by a sort: the reference."""
    with monkeypatch.context() as m:
        m.setattr(sampling, "nucleus_floor", lambda probs, p, branch_free=False: sorted_floor(
            probs.reshape(-1, probs.size(-1)), p).reshape(*probs.shape[:-1], 1))
        return sampling.filter_logits(logits, top_p, top_k)


# top-k below the nucleus, above it, and between the rows' nuclei
SETTINGS = [(0.95, None), (0.505, None), (1.0, None), (None, None), (0.95, 5), (0.5005, 2000), (0.60025, 1050)]


@pytest.mark.parametrize("top_p,top_k", SETTINGS)
@pytest.mark.parametrize("temperature", [0.0, 0.6, 1.0])
def test_filter_equals_the_sorted_filter(temperature, top_p, top_k, monkeypatch):
    logits = torch.stack([c[0] for c in CASES.values()])
    if temperature > 0:
        logits = logits / temperature  # as the samplers call it
    want = sorted_filter(logits, top_p, top_k, monkeypatch)
    assert torch.equal(sampling.filter_logits(logits, top_p, top_k), want)
    assert torch.equal(sampling.filter_logits(logits, top_p, top_k, branch_free=True), want)
    if top_k is None and (top_p is None or top_p >= 1):
        assert torch.equal(want, logits)  # top_p 1: nothing dropped


def test_samplers_at_both_temperatures_use_the_sorted_nucleus(monkeypatch):
    """Temperature 0: the argmax and its probability under the filtered distribution; above 0: the same
    draw from the same generator (sample_tokens) or the same noise (sample_with_noise)."""
    logits = torch.stack([CASES["ties at the cut"][0], CASES["ties at the cut, past the candidates"][0]])
    conf, tok = sampling.sample_tokens(logits, 0.0, 0.505)
    probs = torch.softmax(sorted_filter(logits, 0.505, None, monkeypatch), dim=-1)
    assert torch.equal(tok, probs.argmax(-1)) and torch.allclose(conf, probs.max(-1).values)
    for t, top_p in ((0.6, 0.505), (1.0, 0.60025)):
        want = torch.softmax(sorted_filter(logits / t, top_p, None, monkeypatch), dim=-1)
        conf, tok = sampling.sample_tokens(logits, t, top_p, generator=torch.Generator().manual_seed(3))
        draw = torch.multinomial(want, 1, generator=torch.Generator().manual_seed(3))[:, 0]
        assert torch.equal(tok, draw) and torch.equal(conf, want.gather(-1, draw[:, None])[:, 0])
        noise = torch.rand(logits.shape, generator=torch.Generator().manual_seed(4))
        gumbel = -torch.log(-torch.log(noise.clamp_min(1e-20)))
        expect = (sorted_filter(logits / t, top_p, None, monkeypatch) + gumbel).argmax(-1)
        assert torch.equal(sampling.sample_with_noise(logits, noise, t, top_p), expect)


def test_sample_with_noise_compiles_whole_and_draws_the_same():
    """The static path's CPU decode step is torch.compile'd with fullgraph=True: the radix select must
    not break the graph, and must pick the same tokens compiled."""
    logits = torch.stack([CASES["flat"][0], CASES["ties past the candidates"][0]])
    noise = torch.rand(logits.shape, generator=torch.Generator().manual_seed(5))
    step = torch.compile(lambda x, n: sampling.sample_with_noise(x, n, 0.6, 0.95), fullgraph=True, dynamic=False)
    assert torch.equal(step(logits, noise), sampling.sample_with_noise(logits, noise, 0.6, 0.95))

