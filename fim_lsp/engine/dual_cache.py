"""Approximate prefix/suffix KV caching across diffusion steps (Fast-dLLM's DualCache).

With bidirectional attention the prefix and suffix keys/values depend on the hole, so they change
a little at every step. DualCache keeps them from a full pass and, between refreshes, runs the model
only over the hole block (plus the token before it, whose output predicts the hole's first token),
attending to the cached keys. A refresh every step reproduces the exact path."""
from __future__ import annotations

import math

import torch

from .bidirectional import FinishFactory, RunPass, StaticPass
from .diffusion import LogitsFn
from .loading import LoadedModel, cache_kwarg, output_cache
from .static_model import KVCache, StaticQwen2


def _keep(cache, index: torch.Tensor | slice) -> None:
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[:, :, index], layer.values[:, :, index]


def _block(hole: torch.Tensor) -> tuple[int, int]:
    """Columns b0..b1 that a block pass runs: the hole columns of every row, and the one before them."""
    cols = hole.any(0).nonzero().flatten()
    return max(int(cols[0]) - 1, 0), int(cols[-1]) + 1


def dual_cache_logits(lm: LoadedModel, valid: torch.Tensor, hole: torch.Tensor, banned: list[int],
                      refresh_every: int) -> LogitsFn:
    """A LogitsFn (see diffusion.py) for the sequences whose initial masks are `hole` [B, T]."""
    vocab = len(lm.tokenizer)
    batch, width = valid.shape
    b0, b1 = _block(hole)
    keep = torch.cat([torch.arange(0, b0), torch.arange(b1, width)]).to(valid.device)
    positions = torch.arange(width, device=valid.device).expand(batch, -1)
    full_mask = valid[:, None, None, :].expand(-1, 1, width, -1)
    block_keys = torch.cat([valid[:, keep], valid[:, b0:b1]], dim=1)
    block_mask = block_keys[:, None, None, :].expand(-1, 1, b1 - b0, -1)
    state = {"calls": 0, "cache": None}

    def fn(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        refresh = state["calls"] % refresh_every == 0
        state["calls"] += 1
        with torch.inference_mode():
            if refresh:
                out = lm.model(input_ids=x, attention_mask=full_mask, position_ids=positions,
                               use_cache=True, logits_to_keep=rows)
                cache = output_cache(out)
                _keep(cache, keep)  # the prefix and suffix only
                state["cache"] = cache
            else:
                cache = state["cache"]
                out = lm.model(input_ids=x[:, b0:b1], attention_mask=block_mask,
                               position_ids=positions[:, b0:b1], use_cache=True,
                               logits_to_keep=rows - b0, **{cache_kwarg(lm.model): cache})
                _keep(cache, slice(0, keep.numel()))  # drop the block's keys: recomputed next step
            logits = out.logits[..., :vocab].float()
            logits[..., banned] = -math.inf
        return logits

    return fn


def static_dual_cache_pass(net: StaticQwen2, run: RunPass, buffer: tuple[int, KVCache], valid: torch.Tensor,
                           hole: torch.Tensor, refresh_every: int) -> StaticPass:
    """dual_cache_logits on the static path (see bidirectional.StaticPass): a refresh and a block pass
    are one replayed graph each.

    `buffer` is (its number, a view of the batch's K/V buffer at this width), kept by the runner so
    graphs that hold its address stay valid across requests; graph keys carry the number, so a refresh
    graph and a block graph of one request never hold different buffers. A refresh writes every slot; a
    block pass writes its own columns' fresh keys into their slots before attending, so it sees the
    refresh's prefix/suffix keys and its own current ones, as the eager version does; the next block
    pass or refresh overwrites those slots before reading them. On a GPU a block pass's kernels are
    small (its few query rows against the cached width) and leave most of the SMs to Qwen's decode."""
    number, cache = buffer
    width = valid.size(1)
    b0, b1 = _block(hole)
    dev = valid.device
    all_slots = torch.arange(width, device=dev)
    block_slots = torch.arange(b0, b1, device=dev)
    state = {"calls": 0}

    def call(x: torch.Tensor, rows: torch.Tensor, uniform: torch.Tensor, finish_key: tuple,
             finish: FinishFactory) -> tuple:
        def make():
            done = finish()

            def fn(x_: torch.Tensor, valid_: torch.Tensor, slots: torch.Tensor, rows_: torch.Tensor, u: torch.Tensor):
                # each query sees the valid keys and its own slot: a pad query's softmax is never empty
                mask = valid_[:, None, None, :] | (torch.arange(width, device=dev) == slots[:, None])
                positions = slots.expand(x_.size(0), -1)
                return done(net.forward(x_, positions, mask, cache, write_at=slots, rows=rows_), u)
            return fn

        refresh = state["calls"] % refresh_every == 0
        state["calls"] += 1
        if refresh:
            return run(("dual_full", number, *finish_key), make, [x, valid, all_slots, rows, uniform])
        # the block's columns are an input, not part of the graph: one graph per block width
        return run(("dual_block", number, *finish_key), make, [x[:, b0:b1], valid, block_slots, rows - b0, uniform])

    return call
