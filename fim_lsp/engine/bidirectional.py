"""The diffusion model's full bidirectional pass, on each path:
- eager: stock transformers Qwen2 with a 4-D all-attend mask (pad keys masked out), which makes every
  layer bidirectional; the reference path, sampled on the host (`diffusion.logits_proposer`);
- static: the plain static-shape forward over the same weights, with the sampling inside the pass
  (`sampling.sample_with_uniform`), so a replayed graph returns the window's [B, R] tokens and
  confidences instead of [B, R, V] float32 logits (one graph per shape; the memory it keeps is its
  inputs and outputs). DualCache's passes are in `dual_cache.py`."""
from __future__ import annotations

import math
from typing import Callable

import torch

from .diffusion import DiffusionParams, LogitsFn, Propose
from .loading import LoadedModel
from .sampling import sample_with_uniform
from .static_model import StaticQwen2

# run(key, make, inputs) -> outputs: the runner's pass runner (a graph set in static mode)
RunPass = Callable[[tuple, Callable, list[torch.Tensor]], tuple]


def bidirectional_logits(lm: LoadedModel, valid: torch.Tensor, banned: list[int]) -> LogitsFn:
    """Full-attention forward of a stock Qwen2 model: a 4-D all-attend mask with pad keys masked out
    makes every layer bidirectional. Rows past the tokenizer and `banned` ids can never be sampled."""
    vocab = len(lm.tokenizer)
    attn = valid[:, None, None, :].expand(-1, 1, valid.size(1), -1)
    positions = torch.arange(valid.size(1), device=valid.device).expand(valid.size(0), -1)

    def fn(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            logits = lm.model(input_ids=x, attention_mask=attn, position_ids=positions,
                              logits_to_keep=rows).logits
            logits = logits[..., :vocab].float()
            logits[..., banned] = -math.inf
        return logits

    return fn


# A static pass ends inside the graph with a finish(logits at the window rows [B, R, V], uniform [B, R]),
# made by a factory called before the capture (its tensors must not be copied from the host inside it).
Finish = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]
FinishFactory = Callable[[], Finish]
# call(x, rows, uniform, finish_key, finish) -> the finish's outputs, from one static pass
StaticPass = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, tuple, FinishFactory], tuple]


def sampling_finish(banned: list[int], vocab: int, params: DiffusionParams, confidence: str,
                    device: torch.device) -> FinishFactory:
    """Ban, filter and sample the window's logits inside the pass: outputs (confidence, tokens) [B, R]."""
    def factory() -> Finish:
        banned_ids = torch.tensor(banned, device=device)

        def finish(logits: torch.Tensor, uniform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = logits[..., :vocab].float().index_fill_(-1, banned_ids, -math.inf)
            return sample_with_uniform(logits, uniform, params.temperature, params.top_p, params.top_k, confidence)
        return finish
    return factory


def logits_finish(banned: list[int], vocab: int, device: torch.device) -> FinishFactory:
    """The window's logits themselves, as the eager pass returns them (to compare the two passes)."""
    def factory() -> Finish:
        banned_ids = torch.tensor(banned, device=device)
        return lambda logits, uniform: (logits[..., :vocab].float().index_fill_(-1, banned_ids, -math.inf),)
    return factory


def draw(shape: tuple[int, ...], params: DiffusionParams, generator: torch.Generator | None,
         device: torch.device) -> torch.Tensor:
    """The uniform draws a static pass samples with: one per window position (none needed at T=0)."""
    if params.temperature <= 0:
        return torch.zeros(shape, device=device)
    return torch.rand(shape, generator=generator, device=device)


def static_full_pass(net: StaticQwen2, run: RunPass, valid: torch.Tensor) -> StaticPass:
    """The full bidirectional pass of static shape, one graph per (batch, width, rows, finish) shape."""
    dev = valid.device

    def call(x: torch.Tensor, rows: torch.Tensor, uniform: torch.Tensor, finish_key: tuple,
             finish: FinishFactory) -> tuple:
        def make():
            done = finish()

            def fn(x_: torch.Tensor, valid_: torch.Tensor, rows_: torch.Tensor, u: torch.Tensor):
                width = x_.size(1)
                # a pad query sees itself, so no softmax row is empty
                mask = valid_[:, None, None, :] | torch.eye(width, dtype=torch.bool, device=dev)
                positions = torch.arange(width, device=dev).expand(x_.size(0), -1)
                return done(net.forward(x_, positions, mask, rows=rows_), u)
            return fn

        return run(("full", *finish_key), make, [x, valid, rows, uniform])

    return call


def static_proposer(call: StaticPass, banned: list[int], vocab: int, params: DiffusionParams,
                    generator: torch.Generator | None, device: torch.device) -> Propose:
    """A Propose (see diffusion.py) that samples inside the static pass `call`."""
    def propose(x: torch.Tensor, rows: torch.Tensor, confidence: str) -> tuple[torch.Tensor, torch.Tensor]:
        uniform = draw((x.size(0), rows.numel()), params, generator, device)
        key = ("sample", params.temperature, params.top_p, params.top_k, confidence)
        conf, tokens = call(x, rows, uniform, key, sampling_finish(banned, vocab, params, confidence, device))
        return conf.clone(), tokens.clone()  # a graph's outputs are rewritten by its next replay

    return propose
