"""The masked-diffusion sampler on tiny checkpoints and on hand-written logits."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from fim_lsp.engine.config import ALGS
from fim_lsp.engine.bidirectional import bidirectional_logits
from fim_lsp.engine.diffusion import DiffusionParams, mdm_sample
from fim_lsp.engine.dllm_runner import DllmRunner
from fim_lsp.engine.loading import encode, load_model, mask_token_id
from fim_lsp.engine.results import Cancelled
from forced import forced_lm, token

MASK = 7
V = 12


@pytest.fixture(scope="module")
def dllm(tiny_models):
    return load_model(str(tiny_models / "dllm"), "dllm", torch.device("cpu"), torch.float32)


def infill(lm, mask_id: int, requests, params: DiffusionParams, static: bool = False):
    """The diffusion runner on (prefix text, suffix text, hole length) requests."""
    rows = [(encode(lm.tokenizer, p), encode(lm.tokenizer, s), n) for p, s, n in requests]
    return DllmRunner(lm, mask_id, static=static).infill(rows, params)


def model_fn(dllm, x):
    valid = torch.ones_like(x, dtype=torch.bool)
    return bidirectional_logits(dllm, valid, [mask_token_id(dllm.tokenizer)])


def start_seq(dllm, hole: int = 10) -> torch.Tensor:
    tok = dllm.tokenizer
    mid = mask_token_id(tok)
    p = tok("def add(a, b):\n    return ", add_special_tokens=False)["input_ids"]
    s = tok("\n\nprint(add(1, 2))\n", add_special_tokens=False)["input_ids"]
    return torch.tensor([p + [mid] * hole + s])


@pytest.mark.parametrize("alg", ALGS)
def test_frozen_positions_never_change_and_no_mask_survives(dllm, alg):
    x = start_seq(dllm)
    mid = mask_token_id(dllm.tokenizer)
    frozen = x != mid
    seen = []
    params = DiffusionParams(steps=16, alg=alg, temperature=0.6, alg_temp=0.3 if alg != "p2" else 0.0)
    gen = torch.Generator().manual_seed(3)
    res = mdm_sample(x, mid, model_fn(dllm, x), params, gen, on_step=lambda i, xs: seen.append(xs.clone()))
    assert seen, "the sampler ran no step"
    for xs in seen:
        assert torch.equal(xs[frozen], x[frozen])
    assert not (res.tokens == mid).any()


def bait_logits(x0: torch.Tensor, frozen_looks: str):
    """Hand-written logits for x0 [B, T]: each hole position predicts token (position % 5) + 1 with
    probability 0.5. Every frozen position (prefix, suffix, pad) is bait: it predicts token V-1 with
    probability 0.99 ("peaked": the most confident place to reveal) or predicts nothing
    ("flat": the least confident, what p2 re-masks first). A sampler that ever treats a frozen
    position as a candidate overwrites it."""
    b, t = x0.shape
    frozen = x0 != MASK
    probs = torch.full((b, t, V), 0.5 / (V - 1))
    for p in range(t):
        probs[:, p, p % 5 + 1] = 0.5
    bait = torch.full((V,), 0.01 / (V - 1))
    bait[V - 1] = 0.99
    probs[frozen] = bait if frozen_looks == "peaked" else torch.full((V,), 1.0 / V)
    out = torch.log(torch.cat([probs[:, 1:], probs[:, -1:]], dim=1))  # output j-1 predicts position j

    def fn(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return out[:, rows]

    return fn


@pytest.mark.parametrize("temperature", [0.0, 0.6])
@pytest.mark.parametrize("alg", ALGS)
def test_frozen_prefix_and_suffix_in_a_batch_of_different_hole_lengths(alg, temperature):
    """As a default request: rows with holes of different lengths (and prefixes) share one window, so
    the shorter rows' prefix, suffix and pad tokens sit inside the sampled columns."""
    pad = 0
    rows = [(3, 8, 4), (5, 2, 4), (2, 4, 3)]  # (prefix, hole, suffix) lengths
    width = max(sum(r) for r in rows) + 1
    x = torch.full((len(rows), width), pad)
    for b, (p, h, s) in enumerate(rows):
        x[b, :p] = torch.arange(p) + 1
        x[b, p:p + h] = MASK
        x[b, p + h:p + h + s] = torch.arange(s) % 3 + 8  # never the bait token V-1
    frozen = x != MASK
    fn = bait_logits(x, "flat" if alg == "p2" else "peaked")
    seen = []
    params = DiffusionParams(steps=6, alg=alg, temperature=temperature, top_p=None if temperature == 0 else 0.95,
                             alg_temp=0.0)
    res = mdm_sample(x, MASK, fn, params, torch.Generator().manual_seed(0),
                     on_step=lambda i, xs: seen.append(xs.clone()))
    assert seen
    for xs in seen:
        assert torch.equal(xs[frozen], x[frozen])
    assert torch.equal(res.tokens[frozen], x[frozen]) and not (res.tokens == MASK).any()


def masks_left_maskgit(n: int, steps: int, eps: float) -> list[int]:
    ts = torch.linspace(1, eps, steps + 1)
    left, out = n, []
    for i in range(steps):
        if left == 0:
            break
        k = left if i == steps - 1 else int(math.floor(left * (1 - ts[i + 1] / ts[i])))
        left -= k
        out.append(left)
    return out


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
@pytest.mark.parametrize("hole,steps", [(10, 24), (16, 8), (3, 5)])
def test_forward_passes_follow_topk_schedule(dllm, alg, hole, steps):
    x = start_seq(dllm, hole)
    mid = mask_token_id(dllm.tokenizer)
    trace = []
    res = mdm_sample(x, mid, model_fn(dllm, x), DiffusionParams(steps=steps, alg=alg, temperature=0.0),
                     on_step=lambda i, xs: trace.append(int((xs == mid).sum())))
    expected = masks_left_maskgit(hole, steps, 1e-3)
    assert trace == expected
    assert res.total_passes == len(expected) == res.passes[0]


@pytest.mark.parametrize("hole,steps,passes", [(10, 64, 58), (16, 16, 16), (4, 64, 49), (64, 8, 8)])
def test_p2_forward_passes(dllm, hole, steps, passes):
    """p2 leaves floor(N * (1 - (i+1)/steps)) masks after step i and stops when none is left:
    a 10-token hole at 64 steps costs 58 passes (REFERENCE.md)."""
    x = start_seq(dllm, hole)
    mid = mask_token_id(dllm.tokenizer)
    trace = []
    res = mdm_sample(x, mid, model_fn(dllm, x), DiffusionParams(steps=steps, alg="p2", temperature=0.6),
                     generator=torch.Generator().manual_seed(0),
                     on_step=lambda i, xs: trace.append(int((xs == mid).sum())))
    assert res.total_passes == passes
    assert trace == [math.floor(hole * (1 - Fraction(i + 1, steps))) for i in range(passes)]


def scripted_logits(conf_by_step: list[dict[int, tuple[int, float]]], length: int):
    """A hand-written 'model': at step i, position p predicts token tok with probability prob
    (the rest spread evenly). Keys are positions *after* the logit shift."""
    step = {"i": 0}

    def fn(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        table = conf_by_step[step["i"]]
        step["i"] += 1
        probs = torch.full((1, length, V), 0.0)
        for p in range(length):
            tok, prob = table.get(p, (0, 0.5))
            probs[0, p] = (1 - prob) / (V - 1)
            probs[0, p, tok] = prob
        # the sampler shifts right by one: output j-1 predicts position j
        return torch.log(torch.cat([probs[:, 1:], probs[:, -1:]], dim=1))[:, rows]

    return fn


def test_p2_remasks_the_least_confident_positions_including_revealed_ones():
    # positions 0 and 5 frozen; 1..4 masked (N = 4), 4 steps: masks left 3, 2, 1, 0
    x = torch.tensor([[1, MASK, MASK, MASK, MASK, 2]])
    script = [
        {1: (3, 0.9), 2: (4, 0.2), 3: (5, 0.3), 4: (6, 0.4)},  # keep pos 1 (most confident)
        {1: (3, 0.1), 2: (4, 0.8), 3: (5, 0.7), 4: (6, 0.2)},  # revealed pos 1 now least: re-masked
        {1: (8, 0.9), 2: (9, 0.1), 3: (5, 0.95), 4: (10, 0.3)},  # only 1 mask left
        {1: (8, 0.9), 2: (9, 0.9), 3: (5, 0.9), 4: (10, 0.9)},
    ]
    trace = []
    res = mdm_sample(x, MASK, scripted_logits(script, 6), DiffusionParams(steps=4, alg="p2", temperature=0.0,
                     top_p=None), on_step=lambda i, xs: trace.append(xs[0].tolist()))
    assert trace[0] == [1, 3, MASK, MASK, MASK, 2]
    # step 1: pos 1 (revealed, conf 0.1) and pos 4 (0.2) are the two least confident -> masked;
    # pos 2 and 3 were masks and take their new samples
    assert trace[1] == [1, MASK, 4, 5, MASK, 2]
    # step 2: one mask left: pos 2 keeps its token 4 although now predicted 9 with conf 0.1 ...
    # it is the least confident, so it is the one re-masked; masks 1 and 4 take samples 8 and 10
    assert trace[2] == [1, 8, MASK, 5, 10, 2]
    assert trace[3] == [1, 8, 9, 5, 10, 2]
    assert res.total_passes == 4


def reference_mdm(x, mask_id, logits_fn, steps, alg, eps=1e-3):
    """A direct, batch-1 transcription of the reference `_mdm_sample` at temperature 0 (argmax,
    no alg_temp), written independently of the engine's batched version. torch.topk leaves the
    order of equal confidences unspecified (random-weight models produce exact ties); both sides
    break ties by position, lowest first."""
    x = x.clone()
    frozen = x != mask_id
    n = int((~frozen).sum())
    ts = torch.linspace(1, eps, steps + 1)
    trace = []
    for i in range(steps):
        mask_index = x == mask_id
        if not mask_index.any():
            break
        logits = logits_fn(x, torch.arange(x.size(1)))  # every row, unshifted
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        probs = torch.softmax(logits.float(), dim=-1)
        conf, x0 = probs.max(-1)
        if alg == "topk_margin":
            top = torch.sort(probs, dim=-1, descending=True).values
            conf = top[..., 0] - top[..., 1]
        elif alg == "entropy":
            conf = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
        if alg == "p2":
            kappa = Fraction(i + 1, steps)
            full = torch.where(frozen, torch.full_like(conf, float("inf")), conf)
            k = math.floor(n * (1 - kappa))
            x = torch.where(mask_index, x0, x)
            if k > 0:
                low = torch.sort(full[0], stable=True).indices[:k]
                x[0, low] = mask_id
        else:
            t, s = ts[i], ts[i + 1]
            m = int(mask_index.sum())
            k = int(m * (1 - s / t)) if i < steps - 1 else m
            full = torch.full_like(conf, -float("inf"))
            full[mask_index] = conf[mask_index]
            if k > 0:
                idx = torch.sort(full[0], descending=True, stable=True).indices[:k]
                x[0, idx] = x0[0, idx]
        trace.append(x.clone())
    return x, trace


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy", "p2"])
def test_temperature_zero_equals_reference_step_for_step(dllm, alg):
    x = start_seq(dllm, 12)
    mid = mask_token_id(dllm.tokenizer)
    fn = model_fn(dllm, x)
    ours = []
    res = mdm_sample(x, mid, fn, DiffusionParams(steps=12, alg=alg, temperature=0.0, top_p=None),
                     on_step=lambda i, xs: ours.append(xs.clone()))
    ref_x, ref_trace = reference_mdm(x, mid, fn, 12, alg)
    assert len(ours) == len(ref_trace)
    for a, b in zip(ours, ref_trace):
        assert torch.equal(a, b)
    assert torch.equal(res.tokens, ref_x)
    again = mdm_sample(x, mid, fn, DiffusionParams(steps=12, alg=alg, temperature=0.0, top_p=None))
    assert torch.equal(again.tokens, res.tokens)


def test_suffix_changes_hole_logits(dllm):
    """Bidirectional attention: the hole's logits depend on what comes after it."""
    tok = dllm.tokenizer
    mid = mask_token_id(tok)
    p = tok("x = [1, 2", add_special_tokens=False)["input_ids"]
    a = torch.tensor([p + [mid] * 4 + tok("]\nprint(x)", add_special_tokens=False)["input_ids"]])
    b = torch.tensor([p + [mid] * 4 + tok(")\nreturn y", add_special_tokens=False)["input_ids"]])
    width = min(a.size(1), b.size(1))
    rows = torch.arange(len(p) + 4)
    la = model_fn(dllm, a)(a, rows)[0]
    lb = model_fn(dllm, b)(b, rows)[0]
    assert width > len(p) + 4
    finite = torch.isfinite(la)  # the mask id is banned (-inf) on both sides
    assert (la - lb)[finite].abs().max() > 1e-4


def test_batched_infill_with_padding_matches_single(dllm):
    mid = mask_token_id(dllm.tokenizer)
    params = DiffusionParams(steps=8, alg="p2", temperature=0.0)
    reqs = [("def f(x):\n    return ", "\n", 6), ("import os\n", "\n\nprint(os.name)\n", 9)]
    both = infill(dllm, mid, reqs, params)
    for req, out in zip(reqs, both):
        one = infill(dllm, mid, [req], params)[0]
        assert one.token_ids == out.token_ids
        assert one.forward_passes == out.forward_passes


# The tokens after which the diffusion model has left the hole (README, REFERENCE.md), written out
# here rather than imported, so that dropping one from the engine's list turns a test red.
END_TOKENS = ("<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
              "<|file_sep|>", "<|repo_name|>")


@pytest.mark.parametrize("path", ["eager", "static"])
@pytest.mark.parametrize("end", END_TOKENS)
def test_the_first_end_token_cuts_the_hole_with_real_tokens_on_both_sides(tiny_models, end, path):
    """A forced model writes the hole "x y END z w x" (p2 at 6 steps reveals one bigram link per step):
    the completion is "xy", not "xyzwx" (end tokens dropped) and not the whole hole."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models / "dllm")
    mid = mask_token_id(tok)
    x, y, z, w = (token(tok, c) for c in "xyzw")
    e = tok.convert_tokens_to_ids(end)
    lm = forced_lm(tok, {x: y, y: e, e: z, z: w}, default=x, uniform=(mid,))
    out = infill(lm, mid, [("def f():\n    ", "\nprint(f())\n", 6)],
                 DiffusionParams(steps=6, alg="p2", temperature=0.0), static=path == "static")[0]
    assert out.token_ids == [x, y]
    assert out.text == "xy" and out.hole_length == 6


def test_cancel_stops_between_steps(dllm):
    x = start_seq(dllm, 8)
    mid = mask_token_id(dllm.tokenizer)
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        mdm_sample(x, mid, model_fn(dllm, x), DiffusionParams(steps=64, alg="p2"), cancel=cancel)
    assert calls["n"] == 4
