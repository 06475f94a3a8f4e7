"""Sampling at the default settings against an independent transcription of the reference.

The reference (`sample_tokens` and `_mdm_sample` of Dream / Open-dLLM, REFERENCE.md section 1) is
transcribed below in plain Python floats, apart from the engine's tensors. The engine's draws are
compared with the reference's *distributions* (thousands of rows sampled in one batch, a fixed
generator, a 5-sigma band; tokens the reference gives probability 0 must never appear), so the tests
hold for any correct way of drawing the samples and fail when the distribution is wrong."""
from __future__ import annotations

import math

import pytest
import torch

from fim_lsp.engine.config import ALGS
from fim_lsp.engine.diffusion import DiffusionParams, mdm_sample
from fim_lsp.engine.sampling import sample_tokens, sample_with_noise

LOGITS = [2.0, 1.6, 1.1, 0.7, 0.2, -0.4, -1.0, -2.5]
V = len(LOGITS)
MASK = 99  # outside the hand-written vocabulary
N = 20_000


# -- the reference, in plain Python ----------------------------------------------------------------
def ref_probs(logits: list[float], temperature: float, top_p: float | None, top_k: int | None) -> list[float]:
    """Divide by the temperature; top-p keeps the most likely tokens until their mass exceeds top_p,
    the crossing token included; then top-k keeps the k largest of what is left; softmax."""
    lg = [v / temperature for v in logits] if temperature > 0 else list(logits)
    keep = [True] * len(lg)
    if top_p is not None and top_p < 1:
        z = sum(math.exp(v) for v in lg)
        mass = 0.0
        for rank, i in enumerate(sorted(range(len(lg)), key=lambda j: -lg[j])):
            if rank > 0 and mass > top_p:
                keep[i] = False
            mass += math.exp(lg[i]) / z
    if top_k is not None:
        kept = sorted((lg[i] for i in range(len(lg)) if keep[i]), reverse=True)
        if len(kept) >= top_k:
            keep = [k and lg[i] >= kept[top_k - 1] for i, k in enumerate(keep)]
    z = sum(math.exp(v) for v, k in zip(lg, keep) if k)
    return [math.exp(v) / z if k else 0.0 for v, k in zip(lg, keep)]


def ref_confidence(p: list[float], kind: str) -> float:
    top = sorted(p, reverse=True)
    if kind == "margin":
        return top[0] - top[1]
    if kind == "neg_entropy":
        return sum(q * math.log(q + 1e-10) for q in p)
    return top[0]


def softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def assert_matches(counts: list[int], expected: list[float], n: int) -> None:
    for i, (c, p) in enumerate(zip(counts, expected)):
        if p == 0.0:
            assert c == 0, f"outcome {i} has probability 0 but came {c} times"
        else:
            band = 5 * math.sqrt(p * (1 - p) / n) + 1e-12
            assert abs(c / n - p) <= band, f"outcome {i}: frequency {c / n:.4f}, reference {p:.4f}"


def counts_of(tokens: torch.Tensor, size: int) -> list[int]:
    return torch.bincount(tokens.flatten(), minlength=size).tolist()


SETTINGS = [  # temperature, top_p, top_k
    (0.6, 0.95, None),  # the engine's defaults
    (1.0, None, None),
    (1.0, 0.8, None),
    (0.6, None, 3),
    (0.8, 0.9, 4),  # top-p keeps 4; top-k first would leave 3 for top-p to cut
    (1.0, 0.95, 3),  # top-p keeps 6, top-k cuts to 3
    (0.6, 0.95, 6),  # top-k keeps 6, top-p cuts to 4
]


def test_settings_are_discriminating() -> None:
    """Each case tells the reference from its plausible mistakes, or the tests below prove nothing."""
    assert ref_probs(LOGITS, 0.6, 0.95, None) != ref_probs(LOGITS, 1.0, 0.95, None)
    # top-p keeps the token that crosses the threshold
    assert sum(p > 0 for p in ref_probs(LOGITS, 1.0, 0.8, None)) == 4
    top_k_first = ref_probs([v if i < 4 else -1e9 for i, v in enumerate(LOGITS)], 0.8, 0.9, None)
    assert sum(p > 0 for p in ref_probs(LOGITS, 0.8, 0.9, 4)) == 4 and sum(p > 0 for p in top_k_first) == 3
    assert sum(p > 0 for p in ref_probs(LOGITS, 1.0, 0.95, None)) == 6
    assert sum(p > 0 for p in ref_probs(LOGITS, 1.0, 0.95, 3)) == 3
    assert sum(p > 0 for p in ref_probs(LOGITS, 0.6, 0.95, 6)) == 4


@pytest.mark.parametrize("temperature,top_p,top_k", SETTINGS)
def test_sample_tokens_draws_from_the_reference_distribution(temperature, top_p, top_k) -> None:
    expected = ref_probs(LOGITS, temperature, top_p, top_k)
    logits = torch.tensor(LOGITS).expand(N, V)
    conf, tokens = sample_tokens(logits, temperature, top_p, top_k, generator=torch.Generator().manual_seed(0))
    assert_matches(counts_of(tokens, V), expected, N)
    # the confidence is the probability of the drawn token under the same tempered, filtered distribution
    assert torch.allclose(conf, torch.tensor(expected)[tokens], atol=1e-5)


@pytest.mark.parametrize("temperature,top_p,top_k", SETTINGS)
def test_noise_sampler_draws_from_the_reference_distribution(temperature, top_p, top_k) -> None:
    """The static path's sampler takes its uniform noise as an input (for CUDA graphs)."""
    noise = torch.rand(N, V, generator=torch.Generator().manual_seed(6))
    tokens = sample_with_noise(torch.tensor(LOGITS).expand(N, V), noise, temperature, top_p, top_k)
    assert_matches(counts_of(tokens, V), ref_probs(LOGITS, temperature, top_p, top_k), N)


@pytest.mark.parametrize("kind", ["prob", "margin", "neg_entropy"])
@pytest.mark.parametrize("temperature,top_p,top_k", SETTINGS + [(0.0, 0.95, None), (0.0, 0.7, None), (0.0, None, 3)])
def test_confidence_kinds(kind, temperature, top_p, top_k) -> None:
    expected = ref_probs(LOGITS, temperature, top_p, top_k)
    conf, tokens = sample_tokens(torch.tensor(LOGITS).expand(64, V), temperature, top_p, top_k, confidence=kind,
                                 generator=torch.Generator().manual_seed(1))
    if kind == "prob":
        want = torch.tensor(expected)[tokens]
    else:
        want = torch.full((64,), ref_confidence(expected, kind))
    assert torch.allclose(conf, want, atol=1e-5)


@pytest.mark.parametrize("top_p", [None, 0.95, 0.7])
def test_temperature_zero_is_the_argmax_and_its_filtered_probability(top_p) -> None:
    expected = ref_probs(LOGITS, 0.0, top_p, None)
    shuffled = [LOGITS[i] for i in (3, 0, 5, 1, 7, 2, 6, 4)]  # the argmax is not token 0
    conf, tokens = sample_tokens(torch.tensor([shuffled]), 0.0, top_p, None)
    assert tokens.tolist() == [1]
    assert math.isclose(float(conf), max(expected), rel_tol=1e-5)


def one_hole_batch(n: int) -> torch.Tensor:
    return torch.tensor([[1, MASK, 2]]).repeat(n, 1)


def fixed_logits(per_position: dict[int, list[float]], width: int):
    """A logits function whose *shifted* logits at position p are per_position[p] (flat elsewhere)."""
    table = torch.zeros(width, V)
    for p, lg in per_position.items():
        table[p - 1] = torch.tensor(lg)  # output p-1 predicts position p

    def fn(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return table[rows].expand(x.size(0), -1, -1)

    return fn


@pytest.mark.parametrize("alg", ALGS)
def test_every_algorithm_samples_the_reference_distribution_at_the_defaults(alg) -> None:
    """DiffusionParams() as the engine sets it: temperature 0.6, top-p 0.95. One masked position per row."""
    params = DiffusionParams(steps=1, alg=alg)
    assert (params.temperature, params.top_p, params.top_k) == (0.6, 0.95, None)
    res = mdm_sample(one_hole_batch(N), MASK, fixed_logits({1: LOGITS}, 3), params, torch.Generator().manual_seed(2))
    assert_matches(counts_of(res.tokens[:, 1], V), ref_probs(LOGITS, 0.6, 0.95, None), N)
    assert res.tokens[:, [0, 2]].tolist() == [[1, 2]] * N


HOLE = {  # probabilities at three hole positions: confident, middling, unsure
    1: [0.9] + [0.1 / 7] * 7,
    2: [0.3, 0.6] + [0.1 / 6] * 6,
    3: [0.2, 0.3, 0.35] + [0.15 / 5] * 5,
}


@pytest.mark.parametrize("alg,kind,alg_temp", [("maskgit_plus", "prob", 0.2), ("topk_margin", "margin", 0.2),
                                               ("entropy", "neg_entropy", 0.5)])
def test_alg_temp_chooses_positions_by_softmax_of_confidence(alg, kind, alg_temp) -> None:
    """3 masks, 2 steps: step 0 reveals k = floor(3 * (1 - 0.5005)) = 1 position, drawn with probability
    softmax(confidence / alg_temp) (the reference's softmax + multinomial)."""
    x = torch.tensor([[1, MASK, MASK, MASK, 2]]).repeat(N, 1)
    fn = fixed_logits({p: [math.log(q) for q in probs] for p, probs in HOLE.items()}, 5)
    first = []
    mdm_sample(x, MASK, fn, DiffusionParams(steps=2, alg=alg, temperature=0.0, top_p=None, alg_temp=alg_temp),
               torch.Generator().manual_seed(3), on_step=lambda i, xs: first.append(xs.clone()) if i == 0 else None)
    revealed = first[0][:, 1:4] != MASK
    assert revealed.sum(-1).tolist() == [1] * N
    expected = softmax([ref_confidence(HOLE[p], kind) / alg_temp for p in (1, 2, 3)])
    assert_matches(revealed.sum(0).tolist(), expected, N)
    # the revealed token is the argmax at its position
    for p, probs in HOLE.items():
        rows = revealed[:, p - 1]
        assert (first[0][rows, p] == probs.index(max(probs))).all()


def test_origin_reveals_each_mask_with_probability_one_minus_s_over_t() -> None:
    """After step i a position is still masked with probability prod(s/t) = ts[i+1]: 0.75025, 0.5005,
    0.25075, then none. A revealed token never changes."""
    n, hole, steps = 4000, 8, 4
    x = torch.tensor([[1] + [MASK] * hole + [2]]).repeat(n, 1)
    fn = fixed_logits({p: LOGITS for p in range(1, hole + 1)}, hole + 2)
    seen = []
    mdm_sample(x, MASK, fn, DiffusionParams(steps=steps, alg="origin"), torch.Generator().manual_seed(4),
               on_step=lambda i, xs: seen.append(xs.clone()))
    ts = torch.linspace(1, 1e-3, steps + 1).tolist()
    assert len(seen) == steps
    for i, xs in enumerate(seen):
        masked = int((xs == MASK).sum())
        if i == steps - 1:
            assert masked == 0
        else:
            assert_matches([masked], [ts[i + 1]], n * hole)
        if i:
            was = seen[i - 1] != MASK
            assert torch.equal(xs[was], seen[i - 1][was])


def test_p2_at_temperature_remasks_the_lower_sampled_confidence() -> None:
    """2 masks, 2 steps: step 0 samples both (temperature 0.6, top-p 0.95) and re-masks the one whose
    drawn token has the lower probability. Joint law of (re-masked position, kept token), summed
    exactly over the reference's two distributions."""
    a = [1.5, 1.0, 0.2, -0.3, -1.0, -2.0, -2.2, -3.0]
    b = [0.9, 0.8, 0.6, 0.1, -0.5, -0.6, -2.0, -3.0]
    qa, qb = ref_probs(a, 0.6, 0.95, None), ref_probs(b, 0.6, 0.95, None)
    expected = [0.0] * (2 * V)  # [pos 1 re-masked, pos 2 keeps t] then [pos 2 re-masked, pos 1 keeps t]
    for i, pa in enumerate(qa):
        for j, pb in enumerate(qb):
            if pa and pb:
                assert pa != pb
                if pa < pb:
                    expected[j] += pa * pb
                else:
                    expected[V + i] += pa * pb
    x = torch.tensor([[1, MASK, MASK, 2]]).repeat(N, 1)
    first = []
    mdm_sample(x, MASK, fixed_logits({1: a, 2: b}, 4), DiffusionParams(steps=2, alg="p2"),
               torch.Generator().manual_seed(5), on_step=lambda i, xs: first.append(xs.clone()) if i == 0 else None)
    xs = first[0]
    one = xs[:, 1] == MASK
    assert torch.equal(one, xs[:, 2] != MASK)  # exactly one of the two re-masked
    cells = torch.where(one, xs[:, 2], V + xs[:, 1])
    assert_matches(counts_of(cells, 2 * V), expected, N)
