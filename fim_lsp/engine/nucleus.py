"""The top-p cut without sorting the vocabulary.

Top-p keeps the most likely tokens until their mass first exceeds top_p, the crossing token included.
Sorting all 151,936 probabilities of a row to find that token cost ~15 ms of a ~110 ms CPU decode step.
Here the cut is a value, the *floor*: the crossing token's probability. Every token at least that likely
is kept, so tokens tied with the crossing one are all kept; a sort would keep whichever of them it
happened to order first (top-k keeps the ties at its cut the same way).

`sorted_floor` states the rule with a sort; the engine never calls it (tests and the bench do). The
engine finds the same floor in one of two ways:

- `candidates_floor`: from the top NUCLEUS_CANDIDATES probabilities (a top-k, ~1/30 of a sort). It
  decides every row whose nucleus ends among them; for a trained model that is nearly every row.
- `radix_floor`: the floor's float bits in two digits of 16 bits, as a radix select finds a rank: two
  histogram passes of the probability mass over the row. No sort, no data-dependent branch, so it also
  runs inside a captured CUDA graph or a fullgraph compile. Masses are summed in float64 (float32 where
  the device has no float64) and compared with top_p in float32, as the sorted cumulative sum is on a
  CPU, so the two agree up to the order of float64 additions.

`nucleus_floor` takes the candidates and falls back to the radix select for the rows they do not
decide; `branch_free=True` (the static path) takes the radix select for every row. A vocabulary no
wider than the candidates (the tests' hand-written ones) is decided by them alone, either way."""
from __future__ import annotations

import torch

# A trained code model's nucleus at the usual temperatures lies within its top few hundred tokens
# (random weights spread it over most of the vocabulary: every row falls back).
NUCLEUS_CANDIDATES = 256
_HIGH = 0x3F81  # values of the high 16 bits of a float32 in [0, 1] (1.0 is 0x3F800000)
_LOW = 1 << 16
_ROWS = 64


def _mass_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _crossing(desc: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of the first cumulative sum over top_p [N, 1], whether the sums cross it at all [N])."""
    crossed = desc.cumsum(-1) > top_p
    at = (~crossed).sum(-1, keepdim=True).clamp(max=desc.size(-1) - 1)
    return at, crossed[:, -1]


def sorted_floor(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The floor [N, 1] by the definition: sort, cumulative sum, first entry past top_p. 0 (keep all)
    when the sums never pass it."""
    desc = probs.sort(dim=-1, descending=True).values
    at, crossed = _crossing(desc, top_p)
    return torch.where(crossed[:, None], desc.gather(-1, at), torch.zeros_like(desc[:, :1]))


def candidates_floor(probs: torch.Tensor, top_p: float,
                     k: int = NUCLEUS_CANDIDATES) -> tuple[torch.Tensor, torch.Tensor]:
    """(floor [N, 1], decided [N]): the floor from the top k probabilities, valid where decided, i.e.
    where their cumulative sum passes top_p (the first k entries of the sorted sums are these sums)."""
    desc = probs.topk(min(k, probs.size(-1)), dim=-1).values
    at, decided = _crossing(desc, top_p)
    return desc.gather(-1, at), decided


def radix_floor(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The floor [N, 1] of rows of probabilities [N, V] (float32, in [0, 1]), without a sort.

    The floor is the largest probability v whose mass "all tokens with p >= v" exceeds top_p. A
    non-negative float32 orders like its bits read as an integer, so v is found in two digits: the high
    16 bits (the last value whose mass from the top still exceeds top_p), then the low 16 bits among
    the tokens that share them, counting the mass of the tokens above. Rows go _ROWS at a time, which
    bounds the histograms' memory (~0.65 MB a row)."""
    if probs.size(0) > _ROWS:
        return torch.cat([radix_floor(part, top_p) for part in probs.split(_ROWS)])
    bits = probs.contiguous().view(torch.int32)
    mass = probs.to(_mass_dtype(probs.device))
    n, dev = probs.size(0), probs.device
    high = (bits >> 16).long().clamp_(0, _HIGH - 1)  # a probability <= 1.0 has high bits <= 0x3F80 (NaN: clamped)
    per_high = torch.zeros((n, _HIGH), dtype=mass.dtype, device=dev).scatter_add_(-1, high, mass)
    from_top = per_high.flip(-1).cumsum(-1).flip(-1)  # [n, h]: mass of the tokens whose high bits are >= h
    h = (from_top.float() > top_p).sum(-1, keepdim=True) - 1  # -1: no token's mass passes top_p, keep all
    above = torch.where(h + 1 < _HIGH, from_top.gather(-1, (h + 1).clamp(max=_HIGH - 1)),
                        torch.zeros_like(from_top[:, :1]))
    low = (bits & 0xFFFF).long().masked_fill_(high != h, _LOW)  # tokens outside bucket h: one extra bin, dropped
    per_low = torch.zeros((n, _LOW + 1), dtype=mass.dtype, device=dev).scatter_add_(-1, low, mass)
    from_top_low = above + per_low[:, :_LOW].flip(-1).cumsum(-1).flip(-1)
    # >= 0 by the choice of h; the clamp only guards a float64 rounding tie between the two passes
    lo = ((from_top_low.float() > top_p).sum(-1, keepdim=True) - 1).clamp(min=0)
    floor = ((h << 16) | lo).int().view(torch.float32)
    return torch.where(h >= 0, floor, torch.zeros_like(floor))


def nucleus_floor(probs: torch.Tensor, top_p: float, branch_free: bool = False) -> torch.Tensor:
    """The floor [..., 1] of probabilities [..., V]: keep the tokens with probability >= it."""
    flat = probs.reshape(-1, probs.size(-1))
    if flat.size(-1) <= NUCLEUS_CANDIDATES:
        # the candidates are the whole row: they decide it, without a branch (never passed: keep all)
        floor, decided = candidates_floor(flat, top_p)
        floor = torch.where(decided[:, None], floor, torch.zeros_like(floor))
    elif branch_free:
        floor = radix_floor(flat, top_p)
    else:
        floor, decided = candidates_floor(flat, top_p)
        if not bool(decided.all()):
            rest = ~decided
            floor[rest] = radix_floor(flat[rest], top_p)
    return floor.reshape(*probs.shape[:-1], 1)
