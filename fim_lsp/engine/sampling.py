"""Token sampling shared by both generators (the reference `sample_tokens`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

CONFIDENCE_KINDS = ("prob", "margin", "neg_entropy")


def filter_logits(logits: torch.Tensor, top_p: float | None, top_k: int | None) -> torch.Tensor:
    """Top-p, then top-k, by pushing dropped logits to the dtype's minimum (as the reference does)."""
    low = torch.finfo(logits.dtype).min
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        drop = cum > top_p
        drop[..., 1:] = drop[..., :-1].clone()  # keep the token that crosses top_p
        drop[..., 0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), low)
    if top_k is not None:
        k = min(top_k, logits.size(-1))
        logits = logits.masked_fill(logits < torch.topk(logits, k)[0][..., -1:], low)
    return logits


def sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_p: float | None = None,
    top_k: int | None = None,
    confidence: str = "prob",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (confidence, token) for logits [..., V]. Temperature 0 takes the argmax.

    confidence: "prob" (probability of the chosen token), "margin" (top-1 minus top-2 probability)
    or "neg_entropy" (sum p log p)."""
    logits = logits.float()
    if temperature > 0:
        logits = logits / temperature
    logits = filter_logits(logits, top_p, top_k)
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0:
        flat = probs.reshape(-1, probs.size(-1))
        tokens = torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
        conf = torch.gather(probs, -1, tokens.unsqueeze(-1)).squeeze(-1)
    else:
        conf, tokens = probs.max(dim=-1)
    if confidence == "margin":
        top2 = torch.topk(probs, 2, dim=-1).values
        conf = top2[..., 0] - top2[..., 1]
    elif confidence == "neg_entropy":
        conf = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return conf, tokens
