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


# Greedy decoding with top-p needs the nucleus only for the confidence's normaliser; the nucleus of a
# trained model almost always lies within its top few hundred tokens, so a top-k replaces the sort.
GREEDY_TOP = 1024


def _greedy_nucleus(logits: torch.Tensor, top_p: float, confidence: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """sample_tokens at temperature 0 from the top GREEDY_TOP probabilities, or None when some row's
    nucleus reaches past them (then the full sort decides). Same rule as filter_logits: a token is
    kept when the mass ranked before it is at most top_p."""
    probs = torch.softmax(logits, dim=-1)
    top = torch.topk(probs, min(GREEDY_TOP, probs.size(-1)), dim=-1)
    cum = top.values.cumsum(-1)
    if not bool((cum[..., -1] > top_p).all()):
        return None
    kept = torch.where(cum - top.values <= top_p, top.values, torch.zeros_like(top.values))
    kept = kept / kept.sum(-1, keepdim=True)
    if confidence == "margin":
        conf = kept[..., 0] - kept[..., 1]
    elif confidence == "neg_entropy":
        conf = torch.sum(kept * torch.log(kept + 1e-10), dim=-1)
    else:
        conf = kept[..., 0]
    return conf, top.indices[..., 0]


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
    if temperature <= 0 and top_p is not None and top_p < 1 and top_k is None:
        greedy = _greedy_nucleus(logits, top_p, confidence)
        if greedy is not None:
            return greedy
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
    logits = filter_logits(logits / temperature, top_p, top_k)
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
    probs = torch.softmax(filter_logits(logits, top_p, top_k), dim=-1)
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
