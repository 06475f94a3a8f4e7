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


def _confidence(probs: torch.Tensor, chosen: torch.Tensor, kind: str) -> torch.Tensor:
    """The confidence of a sample: the chosen token's probability ("prob"), the top-1 minus top-2
    probability ("margin") or sum p log p ("neg_entropy")."""
    if kind == "margin":
        top2 = torch.topk(probs, 2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    if kind == "neg_entropy":
        return torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return chosen


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
    return _confidence(probs, conf, confidence), tokens


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


def sample_with_uniform(logits: torch.Tensor, uniform: torch.Tensor, temperature: float,
                        top_p: float | None = None, top_k: int | None = None,
                        confidence: str = "prob") -> tuple[torch.Tensor, torch.Tensor]:
    """`sample_tokens` with its draws given as one uniform number per row (`uniform`, shaped like
    logits without the last axis), inverting the filtered distribution's CDF: the same distribution
    as the multinomial draw, with no host synchronisation and no generator inside, so it runs inside
    a captured CUDA graph, and with only [...]-shaped outputs. Temperature 0 (uniform unused) takes
    the argmax of the filtered probabilities, as sample_tokens does."""
    logits = logits.float()
    if temperature > 0:
        logits = logits / temperature
    # branch-free: this runs inside captured graphs (the diffusion runner's static path)
    probs = torch.softmax(filter_logits(logits, top_p, top_k, branch_free=True), dim=-1)
    if temperature > 0:
        cum = probs.cumsum(-1)
        tokens = (cum <= (uniform * cum[..., -1])[..., None]).sum(-1)
        # never past the last token with any mass (rounding can put the draw at the very end)
        last = probs.size(-1) - 1 - (probs.flip(-1) > 0).long().argmax(-1)
        tokens = torch.minimum(tokens, last)
        conf = probs.gather(-1, tokens[..., None])[..., 0]
    else:
        conf, tokens = probs.max(dim=-1)
    return _confidence(probs, conf, confidence), tokens
