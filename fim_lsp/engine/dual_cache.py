"""Approximate prefix/suffix KV caching across diffusion steps (Fast-dLLM's DualCache).

With bidirectional attention the prefix and suffix keys/values depend on the hole, so they change
a little at every step. DualCache keeps them from a full pass and, between refreshes, runs the model
only over the hole block (plus the token before it, whose output predicts the hole's first token),
attending to the cached keys. A refresh every step reproduces the exact path."""
from __future__ import annotations

import math

import torch

from .loading import LoadedModel, cache_kwarg, output_cache


def _keep(cache, index: torch.Tensor | slice) -> None:
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[:, :, index], layer.values[:, :, index]


def dual_cache_logits(lm: LoadedModel, valid: torch.Tensor, hole: torch.Tensor, banned: list[int],
                      refresh_every: int):
    """A LogitsFn (see diffusion.py) for the sequences whose initial masks are `hole` [B, T]."""
    vocab = len(lm.tokenizer)
    batch, width = valid.shape
    cols = hole.any(0).nonzero().flatten()
    b0, b1 = max(int(cols[0]) - 1, 0), int(cols[-1]) + 1
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
