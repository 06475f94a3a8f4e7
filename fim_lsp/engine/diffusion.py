"""Open-dCoder's masked-diffusion sampler: the reference `_mdm_sample`, batched. The sampler alone:
the bidirectional passes it calls are in `bidirectional.py` and `dual_cache.py`, and the runner that
owns the model, its graphs and its buffers is `dllm_runner.DllmRunner`.

The sequence is `prefix ids + [mask] * L + suffix ids`. Non-mask positions are frozen. Every step runs
one bidirectional forward pass, shifts the logits by one (output i predicts token i+1), samples, and
reveals (or, for p2, re-masks) positions by the algorithm's schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .results import CancelCheck, Cancelled
from .sampling import sample_tokens

# logits_fn(x, rows) -> the model's unshifted output logits [B, len(rows), V] at sequence rows `rows`
LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# propose(x, rows, confidence) -> (confidence [B, R], sampled tokens [B, R]) for the window's columns,
# from the model's outputs at sequence rows `rows`; confidence is a sampling.CONFIDENCE_KINDS entry
Propose = Callable[[torch.Tensor, torch.Tensor, str], tuple[torch.Tensor, torch.Tensor]]
CONFIDENCE = {"maskgit_plus": "prob", "topk_margin": "margin", "entropy": "neg_entropy", "p2": "prob"}
# A diffusion model has left the hole when it emits one of these.
END_TOKENS = ("<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
              "<|file_sep|>", "<|repo_name|>")


@dataclass
class DiffusionParams:
    steps: int = 64
    alg: str = "p2"
    temperature: float = 0.6
    top_p: float | None = 0.95
    top_k: int | None = None
    alg_temp: float = 0.0  # Gumbel-top-k selection for maskgit_plus / topk_margin / entropy
    eps: float = 1e-3
    # Fast-dLLM parallel decoding: positions whose confidence exceeds this are revealed (p2: never
    # re-masked) on top of the schedule. For maskgit_plus/p2 it is a probability, for topk_margin a
    # margin; origin and entropy ignore it.
    threshold: float | None = None
    steps_per_token: float | None = None  # cap steps at ceil(hole length * this)
    cache_refresh: int = 0  # >0: DualCache logits, refreshed every N steps (see dual_cache.py)


@dataclass
class SampleResult:
    tokens: torch.Tensor  # [B, T] final ids
    passes: list[int]  # forward passes each row needed before it had no mask left
    total_passes: int  # forward passes the batch ran


def _select(conf: torch.Tensor, candidates: torch.Tensor, k: torch.Tensor, highest: bool,
            alg_temp: float, generator: torch.Generator | None) -> torch.Tensor:
    """Bool [B, T]: per row, the k[b] candidate positions with the highest (or lowest) confidence.
    With alg_temp > 0 the choice is Gumbel-top-k on confidence / alg_temp (sampling without
    replacement, as the reference's softmax + multinomial)."""
    score = conf.float() if highest else -conf.float()
    if alg_temp > 0:
        u = torch.rand(score.shape, generator=generator, device=score.device).clamp_(1e-20, 1.0)
        score = score / alg_temp - torch.log(-torch.log(u))
    score = score.masked_fill(~candidates, -math.inf)
    order = torch.argsort(score, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(order.size(-1), device=order.device).expand_as(order))
    return (rank < k[:, None]) & candidates


def logits_proposer(logits_fn: LogitsFn, params: "DiffusionParams",
                    generator: torch.Generator | None = None) -> Propose:
    """The reference's proposal: the model's logits, then `sample_tokens` on the host's generator."""
    def propose(x: torch.Tensor, rows: torch.Tensor, confidence: str) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_tokens(logits_fn(x, rows), params.temperature, params.top_p, params.top_k,
                             confidence=confidence, generator=generator)
    return propose


def mdm_sample(
    x: torch.Tensor,
    mask_id: int,
    logits_fn: LogitsFn,
    params: DiffusionParams,
    generator: torch.Generator | None = None,
    cancel: CancelCheck | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> SampleResult:
    """Unmask every `mask_id` in x [B, T], sampling from `logits_fn`'s logits (see run_sampler)."""
    return run_sampler(x, mask_id, logits_proposer(logits_fn, params, generator), params, generator, cancel,
                       on_step)


def run_sampler(
    x: torch.Tensor,
    mask_id: int,
    propose: Propose,
    params: DiffusionParams,
    generator: torch.Generator | None = None,
    cancel: CancelCheck | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> SampleResult:
    """Unmask every `mask_id` in x [B, T].

    Only the window of columns that hold a mask in some row can change, so sampling and selection
    run on that window alone and the model projects to the vocabulary only the rows that predict it
    (a 0.5B model's 151936-way head over a 2k-token context is most of the cost otherwise).
    `generator` draws the schedule's own randomness (origin's reveals, alg_temp's Gumbel noise)."""
    full = x.clone()
    cols = (full == mask_id).any(0).nonzero().flatten()
    if cols.numel() == 0:
        return SampleResult(tokens=full, passes=[0] * full.size(0), total_passes=0)
    w0, w1 = int(cols[0]), int(cols[-1]) + 1
    # the logit shift: window column j reads output j-1 (column 0 reads output 0, as the reference)
    rows = (torch.arange(w0, w1, device=full.device) - 1).clamp(min=0)
    x = full[:, w0:w1]
    frozen = x != mask_id
    n_initial = (~frozen).sum(-1)
    ts = torch.linspace(1, params.eps, params.steps + 1, device=x.device)
    passes = [0] * x.size(0)
    total = 0
    for i in range(params.steps):
        masked = x == mask_id
        if not bool(masked.any()):
            break
        if cancel is not None and cancel():
            raise Cancelled()
        total += 1
        for row in masked.any(-1).nonzero().flatten().tolist():
            passes[row] = total
        last = i == params.steps - 1
        t, s = ts[i], ts[i + 1]
        if params.alg == "origin":
            reveal = masked & (torch.rand(x.shape, generator=generator, device=x.device) < (1 - s / t))
            if last:
                reveal = masked
            _, x0 = propose(full, rows, "prob")
            x = torch.where(reveal, x0, x)
        elif params.alg == "p2":
            conf, x0 = propose(full, rows, "prob")
            # floor(N * (1 - kappa)), kappa = (i+1)/steps, in integers: float32 turns 7 into 6.9999
            k = n_initial * (params.steps - i - 1) // params.steps
            candidates = ~frozen
            if params.threshold is not None:
                candidates &= conf <= params.threshold
            remask = _select(conf, candidates, k, highest=False, alg_temp=0.0, generator=generator)
            x = torch.where(masked & ~remask, x0, x)
            x = x.masked_fill(remask, mask_id)
        elif params.alg in CONFIDENCE:
            conf, x0 = propose(full, rows, CONFIDENCE[params.alg])
            m = masked.sum(-1)
            k = m if last else torch.floor(m.float() * (1 - s / t)).long()
            reveal = _select(conf, masked, k, highest=True, alg_temp=params.alg_temp, generator=generator)
            if params.threshold is not None and params.alg != "entropy":
                reveal |= masked & (conf > params.threshold)
            x = torch.where(reveal, x0, x)
        else:
            raise ValueError(f"unknown diffusion algorithm {params.alg!r}")
        full[:, w0:w1] = x
        if on_step is not None:
            on_step(i, full)
    return SampleResult(tokens=full, passes=passes, total_passes=total)
