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
- `radix_floor`: the floor's float bits digit by digit (11, 11, then 10 bits), as a radix select finds a
  rank: three histogram passes of the probability mass over the row. No sort, no data-dependent branch,
  so it also runs inside a captured CUDA graph or a fullgraph compile. Masses are summed in float64
  (float32 where the device has no float64) and compared with top_p in float32, as the sorted
  cumulative sum is on a CPU, so the two agree up to the order of float64 additions.

`nucleus_floor` takes the candidates and falls back to the radix select for the rows they do not
decide; `branch_free=True` (the static path) takes the radix select for every row. A vocabulary no
wider than the candidates (the tests' hand-written ones) is decided by them alone, either way."""
from __future__ import annotations

import torch

# A trained code model's nucleus at the usual temperatures lies within its top few hundred tokens
# (random weights spread it over most of the vocabulary: every row falls back).
NUCLEUS_CANDIDATES = 256
_DIGITS = (11, 11, 10)  # the bits of a float32, from the top (the sign bit is 0)


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
    """The floor [N, 1] of rows of non-negative float32 probabilities [N, V], without a sort.

    The floor is the largest probability v whose mass "all tokens with p >= v" exceeds top_p. A
    non-negative float32 orders like its bits read as an integer, so v is found digit by digit from
    the top (11, 11, then 10 bits): among the tokens that share the digits found so far, the mass per
    value of the next digit, summed from the top on the mass of the tokens already above, picks the
    last digit whose mass still exceeds top_p. Histograms of 2048 bins keep it small for many rows."""
    bits = probs.contiguous().view(torch.int32)
    mass = probs.to(_mass_dtype(probs.device))
    n = probs.size(0)
    prefix = torch.zeros((n, 1), dtype=torch.int32, device=probs.device)  # the floor's bits found so far
    above = torch.zeros((n, 1), dtype=mass.dtype, device=probs.device)  # mass of the tokens above them
    keep_all = torch.zeros((n, 1), dtype=torch.bool, device=probs.device)
    shift = 32
    for width in _DIGITS:
        shift -= width
        size = 1 << width
        digit = ((bits >> shift) & (size - 1)).long()
        if shift + width < 32:  # tokens outside the prefix go to one extra bin, dropped
            digit = digit.masked_fill((bits >> (shift + width)) != (prefix >> (shift + width)), size)
        hist = torch.zeros((n, size + 1), dtype=mass.dtype, device=probs.device).scatter_add_(-1, digit, mass)
        from_top = above + hist[:, :size].flip(-1).cumsum(-1).flip(-1)  # [n, d]: mass of the tokens >= d
        d = (from_top.float() > top_p).sum(-1, keepdim=True) - 1
        if shift + width == 32:
            keep_all = d < 0  # no token's mass from the top passes top_p
        # later digits: >= 0 by the choice of the earlier ones; the clamp only guards a float64 rounding
        # tie between two passes
        d = d.clamp(min=0)
        above = torch.where(d + 1 < size, from_top.gather(-1, (d + 1).clamp(max=size - 1)), above)
        prefix = prefix | (d.int() << shift)
    return torch.where(keep_all, torch.zeros_like(probs[:, :1]), prefix.view(torch.float32))


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
