"""Token sampling shared by both generators (the reference `sample_tokens`)."""
from __future__ import annotations

import torch

from .nucleus import nucleus_floor

CONFIDENCE_KINDS = ("prob", "margin", "neg_entropy")


def filter_logits(logits: torch.Tensor, top_p: float | None, top_k: int | None,
                  branch_free: bool = False) -> torch.Tensor:
    """Top-p, then top-k, by pushing dropped logits to the dtype's minimum (as the reference does).
    Top-p keeps every token at least as likely as the one whose mass crosses top_p (ties at the cut
    included, as top-k keeps them), found without sorting the vocabulary (nucleus.py); branch_free
    for captured graphs."""
    low = torch.finfo(logits.dtype).min
    if top_p is not None and top_p < 1:
        probs = torch.softmax(logits, dim=-1)
        logits = logits.masked_fill(probs < nucleus_floor(probs, top_p, branch_free), low)
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


def sample_with_noise(logits: torch.Tensor, noise: torch.Tensor | None, temperature: float,
                      top_p: float | None = None, top_k: int | None = None) -> torch.Tensor:
    """Tokens [...] drawn from the same distribution as `sample_tokens`, by the Gumbel-max trick on
    uniform `noise` shaped like `logits`. The draws are an input, not a generator inside the function,
    so it can run in a captured CUDA graph. Temperature 0 (noise unused) takes the argmax."""
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / temperature, top_p, top_k, branch_free=True)
    gumbel = -torch.log(-torch.log(noise.clamp_min(1e-20)))
    return (logits + gumbel).argmax(dim=-1)
