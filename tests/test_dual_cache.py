"""DualCache numerics: the cached logits themselves, compared with a full bidirectional pass.

Judging the cache by the tokens a random-weight model picks hides errors (a 0.15 logit error does not
change an argmax). Here the logits of every step are compared, on a right-padded batch of two holes
of different lengths, while the hole fills step by step:
- at every refresh the logits equal a full pass;
- between refreshes, while the hole has not changed, they equal a full pass too (the cached keys are
  then fresh), and in a one-layer model they always do (its prefix/suffix keys depend on the tokens
  alone, so the block pass must reproduce the full pass exactly);
- in the two-layer model the hole does move the prefix/suffix keys, so a cache that is never
  refreshed is wrong at the boundary: a check below proves the boundary comparison can see that."""
from __future__ import annotations

import pytest
import torch

from fim_lsp.engine.bidirectional import bidirectional_logits, logits_finish
from fim_lsp.engine.diffusion import DiffusionParams
from fim_lsp.engine.dllm_runner import DllmRunner
from fim_lsp.engine.dual_cache import dual_cache_logits, static_dual_cache_pass
from fim_lsp.engine.graphs import bucket
from fim_lsp.engine.loading import LoadedModel, encode, load_model, mask_token_id
from fim_lsp.engine.static_model import MIN_CACHE
from fim_lsp.selfcheck.checks import CONF_ATOL
from fim_lsp.tiny import build_model

ATOL = 1e-4
REFRESH = 3


@pytest.fixture(scope="module")
def two_layers(tiny_models) -> LoadedModel:
    return load_model(str(tiny_models / "dllm"), "dllm", torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def one_layer(two_layers) -> LoadedModel:
    rows = two_layers.model.get_input_embeddings().weight.size(0)
    model = build_model(rows, seed=3, layers=1).eval()
    return LoadedModel("one-layer", model, two_layers.tokenizer, torch.device("cpu"), torch.float32)


def batch(lm: LoadedModel) -> tuple[torch.Tensor, torch.Tensor, int]:
    tok = lm.tokenizer
    mid = mask_token_id(tok)
    rows = [encode(tok, "def area(w, h):\n    return ") + [mid] * 6 + encode(tok, "\n\nprint(area(2, 3))\n"),
            encode(tok, "import os\n") + [mid] * 3 + encode(tok, "\nprint(os.name)\n")]
    width = max(map(len, rows))
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    x = torch.full((2, width), eos)
    valid = torch.zeros((2, width), dtype=torch.bool)
    for b, r in enumerate(rows):
        x[b, : len(r)] = torch.tensor(r)
        valid[b, : len(r)] = True
    return x, valid, mid


def steps(x: torch.Tensor, mid: int, fill: list[int]):
    """The sequences a sampler sees: as many calls as `fill` has entries; before call i, the first
    fill[i] masks of each row are revealed (a changing hole)."""
    holes = [(x[b] == mid).nonzero().flatten() for b in range(x.size(0))]
    for n in fill:
        xs = x.clone()
        for b, cols in enumerate(holes):
            xs[b, cols[:n]] = 100 + cols[:n]  # ordinary BPE tokens
        yield xs


def window_rows(x: torch.Tensor, mid: int) -> torch.Tensor:
    cols = (x == mid).any(0).nonzero().flatten()
    return (torch.arange(int(cols[0]), int(cols[-1]) + 1) - 1).clamp(min=0)


def compare(lm: LoadedModel, fill: list[int], refresh_every: int) -> list[float]:
    """Max |cached - full| logit difference at each call."""
    x, valid, mid = batch(lm)
    rows = window_rows(x, mid)
    cached = dual_cache_logits(lm, valid, x == mid, [mid], refresh_every)
    full = bidirectional_logits(lm, valid, [mid])
    out = []
    for xs in steps(x, mid, fill):
        a, b = cached(xs, rows), full(xs, rows)
        finite = torch.isfinite(b)
        assert torch.equal(finite, torch.isfinite(a))  # the same ids banned
        out.append(float((a - b)[finite].abs().max()))
    return out


def test_exact_at_every_refresh_and_while_the_hole_is_unchanged(two_layers):
    fill = [0, 0, 1, 2, 2, 3, 4]  # calls 0, 3, 6 refresh; call 1 and call 4 see the hole as refreshed
    err = compare(two_layers, fill, REFRESH)
    for i in (0, 1, 3, 4, 6):
        assert err[i] < ATOL, f"call {i}: logits differ from a full pass by {err[i]:.3g}"


def test_the_boundary_check_sees_a_stale_cache(two_layers):
    """Never refreshed, the same calls are off at the boundaries: the test above can fail."""
    err = compare(two_layers, [0, 0, 1, 2, 2, 3, 4], 10**6)
    assert err[3] > 100 * ATOL and err[6] > 100 * ATOL


def test_one_layer_block_pass_equals_the_full_pass_at_every_step(one_layer):
    err = compare(one_layer, [0, 1, 2, 3, 4, 5, 6], REFRESH)
    assert max(err) < ATOL, err


def padded(x: torch.Tensor, width: int) -> torch.Tensor:
    """x right-padded with zeros (False) to `width` columns: the static path's bucketed batch."""
    out = torch.zeros((x.size(0), width), dtype=x.dtype)
    out[:, : x.size(1)] = x
    return out


def static_logits(lm: LoadedModel, runner: DllmRunner, valid: torch.Tensor, hole: torch.Tensor, refresh_every: int):
    """The static DualCache pass of `runner` (its graphs, its K/V buffer) returning the logits it
    would sample from, as a LogitsFn."""
    call = static_dual_cache_pass(runner.net, runner.graphs.run, runner.buffer(*valid.shape), valid, hole,
                                  refresh_every)
    finish = logits_finish([runner.mask_id], len(lm.tokenizer), torch.device("cpu"))
    return lambda x, rows: call(x, rows, torch.zeros(x.size(0), rows.numel()), ("logits",), finish)[0]


def compare_static(lm: LoadedModel, fill: list[int], refresh_every: int) -> tuple[list[float], list[float]]:
    """Max |static - eager DualCache| and |static - full pass| logit difference at each call."""
    x, valid, mid = batch(lm)
    rows = window_rows(x, mid)
    width = bucket(x.size(1), 64)
    static = DllmRunner(lm, mid, static=True)
    mine = static_logits(lm, static, padded(valid, width), padded(x, width) == mid, refresh_every)
    eager = dual_cache_logits(lm, valid, x == mid, [mid], refresh_every)
    full = bidirectional_logits(lm, valid, [mid])
    to_eager, to_full = [], []
    for xs in steps(x, mid, fill):
        a, e, f = mine(padded(xs, width), rows), eager(xs, rows), full(xs, rows)
        assert torch.equal(torch.isfinite(a), torch.isfinite(e))  # the same ids banned
        ok = torch.isfinite(e)
        to_eager.append(float((a - e)[ok].abs().max()))
        to_full.append(float((a - f)[ok].abs().max()))
    assert len(static.graphs) == 2  # one refresh graph and one block graph, replayed at every call
    return to_eager, to_full


def test_static_dual_cache_equals_the_eager_one_at_every_call(two_layers):
    fill = [0, 0, 1, 2, 2, 3, 4, 4]  # calls 0, 3, 6 refresh; the others are block passes
    to_eager, to_full = compare_static(two_layers, fill, REFRESH)
    assert max(to_eager) < 1e-5, to_eager
    for i in (0, 3, 6):
        assert to_full[i] < 1e-5, f"refresh {i}: logits differ from a full pass by {to_full[i]:.3g}"
    assert to_full[5] > 100 * ATOL, to_full  # a block pass after the hole moved: the approximation


def test_static_one_layer_block_pass_equals_the_full_pass_at_every_step(one_layer):
    _, to_full = compare_static(one_layer, [0, 1, 2, 3, 4, 5, 6], REFRESH)
    assert max(to_full) < 1e-5, to_full


def test_a_grown_buffer_never_pairs_an_old_refresh_graph_with_a_new_block_graph(two_layers):
    """A request wider than the K/V buffer gets a larger one. A later narrow request must not replay the
    refresh graph captured on the old buffer and then capture its block graph on the new one: the block
    pass would read keys the refresh never wrote (here, the wide request's)."""
    x, valid, mid = batch(two_layers)
    width, rows = bucket(x.size(1), 64), window_rows(x, mid)
    static = DllmRunner(two_layers, mid, static=True)
    # a refresh alone at this width: its graph is captured, no block graph yet
    static_logits(two_layers, static, padded(valid, width), padded(x, width) == mid, REFRESH)(padded(x, width), rows)
    wide = torch.full((2, MIN_CACHE + 64), 100)
    wide[:, 10:14] = mid
    static_logits(two_layers, static, torch.ones_like(wide, dtype=torch.bool), wide == mid, REFRESH)(
        wide, torch.arange(9, 13))
    assert static.buffers_made == 2
    mine = static_logits(two_layers, static, padded(valid, width), padded(x, width) == mid, REFRESH)
    eager = dual_cache_logits(two_layers, valid, x == mid, [mid], REFRESH)
    for xs in steps(x, mid, [0, 1]):  # a refresh, then a block pass
        a, e = mine(padded(xs, width), rows), eager(xs, rows)
        ok = torch.isfinite(e)
        assert float((a - e)[ok].abs().max()) < 1e-5


def _rows(lm: LoadedModel) -> list[tuple[list[int], list[int], int]]:
    tok = lm.tokenizer
    return [(encode(tok, "def area(w, h):\n    return "), encode(tok, "\n\nprint(area(2, 3))\n"), 8),
            (encode(tok, "import os\n"), encode(tok, "\nprint(os.name)\n"), 4)]


def _params(refresh: int) -> DiffusionParams:
    return DiffusionParams(steps=8, alg="p2", temperature=0.0, top_p=1.0, top_k=None, alg_temp=0.0, eps=1e-3,
                           threshold=0.9, steps_per_token=None, cache_refresh=refresh)


def test_compare_paths_finds_the_static_dual_cache_equal_to_the_eager_one_at_every_step(two_layers):
    """The selfcheck's tie-proof comparison: fed the eager run's inputs, the graphed DualCache passes
    (a refresh every 3 steps, block passes between) propose the eager path's tokens and confidences."""
    runner = DllmRunner(two_layers, mask_token_id(two_layers.tokenizer), static=True)
    gap = runner.compare_paths(_rows(two_layers), _params(REFRESH))
    assert gap.calls == 8 and gap.token_mismatches == 0 and gap.max_conf_diff < CONF_ATOL / 100, gap
    assert {k[0][0] for k in runner.graphs.keys()} == {"dual_full", "dual_block"}


def test_compare_paths_sees_a_static_pass_that_never_refreshes(two_layers, monkeypatch):
    """The comparison goes red when the static path computes something else: here its cache is
    refreshed once and then never, while the eager one refreshes every 3 steps."""
    import fim_lsp.engine.dllm_runner as dllm_runner

    real = dllm_runner.static_dual_cache_pass
    monkeypatch.setattr(dllm_runner, "static_dual_cache_pass",
                        lambda net, run, buffer, valid, hole, every: real(net, run, buffer, valid, hole, 10**6))
    runner = DllmRunner(two_layers, mask_token_id(two_layers.tokenizer), static=True)
    gap = runner.compare_paths(_rows(two_layers), _params(REFRESH))
    assert gap.max_conf_diff > CONF_ATOL, gap  # the selfcheck's tolerance sees it
