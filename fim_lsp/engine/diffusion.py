"""Open-dCoder masked-diffusion infilling: the reference `_mdm_sample`, batched.

The sequence is `prefix ids + [mask] * L + suffix ids`. Non-mask positions are frozen. Every step runs
one bidirectional forward pass, shifts the logits by one (output i predicts token i+1), samples, and
reveals (or, for p2, re-masks) positions by the algorithm's schedule."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from .dual_cache import dual_cache_logits, static_dual_cache_logits
from .graphs import GraphCache, bucket
from .loading import LoadedModel, decode_whole, encode, special_id
from .results import CancelCheck, Cancelled, Generation
from .sampling import sample_tokens
from .static_model import KVCache, cache_length

# logits_fn(x, rows) -> the model's unshifted output logits [B, len(rows), V] at sequence rows `rows`
LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
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


def mdm_sample(
    x: torch.Tensor,
    mask_id: int,
    logits_fn: LogitsFn,
    params: DiffusionParams,
    generator: torch.Generator | None = None,
    cancel: CancelCheck | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> SampleResult:
    """Unmask every `mask_id` in x [B, T].

    Only the window of columns that hold a mask in some row can change, so sampling and selection
    run on that window alone and the model projects to the vocabulary only the rows that predict it
    (a 0.5B model's 151936-way head over a 2k-token context is most of the cost otherwise)."""
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
        logits = logits_fn(full, rows)
        total += 1
        for row in masked.any(-1).nonzero().flatten().tolist():
            passes[row] = total
        last = i == params.steps - 1
        t, s = ts[i], ts[i + 1]
        if params.alg == "origin":
            reveal = masked & (torch.rand(x.shape, generator=generator, device=x.device) < (1 - s / t))
            if last:
                reveal = masked
            _, x0 = sample_tokens(logits, params.temperature, params.top_p, params.top_k, generator=generator)
            x = torch.where(reveal, x0, x)
        elif params.alg == "p2":
            conf, x0 = sample_tokens(logits, params.temperature, params.top_p, params.top_k, generator=generator)
            # floor(N * (1 - kappa)), kappa = (i+1)/steps, in integers: float32 turns 7 into 6.9999
            k = n_initial * (params.steps - i - 1) // params.steps
            candidates = ~frozen
            if params.threshold is not None:
                candidates &= conf <= params.threshold
            remask = _select(conf, candidates, k, highest=False, alg_temp=0.0, generator=generator)
            x = torch.where(masked & ~remask, x0, x)
            x = x.masked_fill(remask, mask_id)
        elif params.alg in CONFIDENCE:
            conf, x0 = sample_tokens(logits, params.temperature, params.top_p, params.top_k,
                                     confidence=CONFIDENCE[params.alg], generator=generator)
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


@dataclass
class StaticPass:
    """The static path's pieces for the diffusion model: its plain forward and the graphs it replays."""

    net: object  # static_model.StaticQwen2
    graphs: GraphCache
    width_step: int = 64  # batch widths are padded to a multiple of this, so graphs replay across requests
    # DualCache K/V: one buffer per batch size, made outside any capture (graphs hold its address), and a
    # view of its first `width` slots per request. A wider request gets a larger buffer; graphs that
    # captured views of the old one keep it alive through their closures.
    caches: dict[int, tuple[int, KVCache]] = field(default_factory=dict)
    buffers: int = 0

    def cache(self, batch: int, width: int) -> tuple[int, KVCache]:
        """(the buffer's number, a view of its first `width` slots). Graph keys carry the number, so a
        request's refresh graph and block graph never hold different buffers."""
        number, whole = self.caches.get(batch, (-1, None))
        if whole is None or whole.length < width:
            number, self.buffers = self.buffers, self.buffers + 1
            whole = self.net.new_cache(batch, cache_length(width))  # type: ignore[attr-defined]
            self.caches[batch] = (number, whole)
        return number, KVCache([k[:, :, :width] for k in whole.keys], [v[:, :, :width] for v in whole.values])


def static_bidirectional_logits(lm: LoadedModel, static: StaticPass, valid: torch.Tensor, banned: list[int]) -> LogitsFn:
    """bidirectional_logits through one replayed graph per (batch, width, rows) shape."""
    vocab = len(lm.tokenizer)

    def make():
        banned_ids = torch.tensor(banned, device=valid.device)  # made here: no host copy inside a capture

        def fn(x: torch.Tensor, valid_: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor]:
            width = x.size(1)
            # a pad query sees itself, so no softmax row is empty
            mask = valid_[:, None, None, :] | torch.eye(width, dtype=torch.bool, device=x.device)
            positions = torch.arange(width, device=x.device).expand(x.size(0), -1)
            logits = static.net.forward(x, positions, mask, rows=rows)[..., :vocab].float()  # type: ignore[attr-defined]
            return (logits.index_fill_(-1, banned_ids, -math.inf),)
        return fn

    def fn(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return static.graphs.run("dllm", make, [x, valid, rows])[0]

    return fn


def diffusion_infill(
    lm: LoadedModel,
    mask_id: int,
    requests: list[tuple[str, str, int]],
    params: DiffusionParams,
    generator: torch.Generator | None = None,
    cancel: CancelCheck | None = None,
    static: StaticPass | None = None,
) -> list[Generation]:
    """Fill each (prefix, suffix, hole_length) in one right-padded batch. With `static` each pass (with
    DualCache: each refresh and each block pass) is a replayed graph over a width padded to
    `static.width_step`."""
    start = time.perf_counter()
    tok, dev = lm.tokenizer, lm.device
    ends = [i for i in (special_id(tok, t) for t in END_TOKENS) if i is not None]
    pad = tok.pad_token_id if tok.pad_token_id is not None else ends[0]
    rows, spans = [], []
    for prefix, suffix, length in requests:
        p = encode(tok, prefix)
        rows.append(p + [mask_id] * length + encode(tok, suffix))
        spans.append((len(p), len(p) + length))
    width = max(len(r) for r in rows)
    if static is not None:
        width = bucket(width, static.width_step)
    x = torch.full((len(rows), width), pad, dtype=torch.long, device=dev)
    valid = torch.zeros((len(rows), width), dtype=torch.bool, device=dev)
    for b, r in enumerate(rows):
        x[b, : len(r)] = torch.tensor(r, device=dev)
        valid[b, : len(r)] = True
    if params.steps_per_token is not None:
        longest = max(length for _, _, length in requests)
        params = replace(params, steps=max(1, min(params.steps, math.ceil(longest * params.steps_per_token))))
    if static is not None and params.cache_refresh > 0:
        logits_fn = static_dual_cache_logits(lm, static, valid, x == mask_id, [mask_id], params.cache_refresh)
    elif params.cache_refresh > 0:
        logits_fn = dual_cache_logits(lm, valid, x == mask_id, [mask_id], params.cache_refresh)
    elif static is not None:
        logits_fn = static_bidirectional_logits(lm, static, valid, [mask_id])
    else:
        logits_fn = bidirectional_logits(lm, valid, [mask_id])
    result = mdm_sample(x, mask_id, logits_fn, params, generator, cancel)
    seconds = (time.perf_counter() - start) / len(rows)
    out = []
    for b, (lo, hi) in enumerate(spans):
        hole = result.tokens[b, lo:hi].tolist()
        # The first end token closes the hole: the model chose a shorter middle.
        cut = next((j for j, t in enumerate(hole) if t in ends), len(hole))
        ids, text = decode_whole(tok, hole[:cut])
        out.append(Generation(model="dllm", text=text, token_ids=ids,
                              forward_passes=result.passes[b], seconds=seconds, hole_length=hi - lo))
    return out
