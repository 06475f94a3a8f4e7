"""Perplexity of a completion in its full context, with a causal LM.

PPL(C | X) = exp(-(1/n) * sum_i log P(c_i | c_<i, X)) over the n scored tokens.
- `fim` (default): `<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>C<|endoftext|>`; the completion sees
  the suffix, and the closing <|endoftext|> is scored too, so "the hole ends here" counts. An empty
  completion is scored by that end token alone.
- `plain` (the seed's): `P C S` as plain text, completion tokens only. An empty completion has no
  tokens: its perplexity is +inf and it never wins. With an empty prefix the first completion token
  has no context (Qwen has no BOS) and is not scored.
Segments are tokenized on their own and concatenated, so the completion's span is exact.

This is the full-pass scorer (the exact path's, and the reference of the scoring on Qwen's cached
prompt, which is `QwenRunner.score`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .ar_fim import fim_ids
from .loading import LoadedModel, encode, special_id
from .results import Score


@dataclass
class ScoreItem:
    prefix: str
    suffix: str
    completion: str
    # fim mode: the complete FIM prompt ids the generators got (every candidate is scored under the same
    # prompt); None: built here from prefix and suffix. plain mode always uses prefix and suffix.
    prompt: list[int] | None = None


def build(tokenizer, item: ScoreItem, mode: str) -> tuple[list[int], int, int]:
    """Ids and the [start, end) span of the scored tokens."""
    comp = encode(tokenizer, item.completion)
    if mode == "fim":
        ctx = item.prompt if item.prompt is not None else fim_ids(tokenizer, item.prefix, item.suffix)
        eos = special_id(tokenizer, "<|endoftext|>")
        ids = ctx + comp + [eos]
        return ids, len(ctx), len(ids)
    if mode == "plain":
        pre = encode(tokenizer, item.prefix)
        ids = pre + comp + encode(tokenizer, item.suffix)
        return ids, max(len(pre), 1), len(pre) + len(comp)
    raise ValueError(f"unknown score mode {mode!r}")


def score_batch(lm: LoadedModel, items: list[ScoreItem], mode: str = "fim") -> list[Score]:
    """Score every item in one right-padded forward pass."""
    if not items:
        return []
    built = [build(lm.tokenizer, it, mode) for it in items]
    width = max(len(ids) for ids, _, _ in built)
    pad = lm.tokenizer.pad_token_id or 0
    x = torch.full((len(built), width), pad, dtype=torch.long, device=lm.device)
    attn = torch.zeros_like(x)
    for b, (ids, _, _) in enumerate(built):
        x[b, : len(ids)] = torch.tensor(ids, device=lm.device)
        attn[b, : len(ids)] = 1
    # Project to the vocabulary only the rows that predict scored tokens: the context can be
    # thousands of tokens, the completions a few dozen.
    first = min(lo for _, lo, _ in built) - 1
    last = max(max(hi, lo) for _, lo, hi in built) - 1
    stop = min(max(last, first + 1), width - 1)
    if stop <= first:  # plain mode, nothing but empty completions
        return [score_from_logprobs([]) for _ in items]
    rows = torch.arange(first, stop, device=lm.device)
    with torch.inference_mode():
        logits = lm.model(input_ids=x, attention_mask=attn, logits_to_keep=rows).logits.float()
    targets = x[:, rows + 1]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    return [score_from_logprobs(logp[b, lo - 1 - first: hi - 1 - first].tolist() if hi > lo else [])
            for b, (_, lo, hi) in enumerate(built)]


def score_from_logprobs(token_logprobs: list[float]) -> Score:
    if not token_logprobs:
        return Score(perplexity=math.inf, mean_logprob=-math.inf, tokens=0, token_logprobs=[])
    mean = sum(token_logprobs) / len(token_logprobs)
    return Score(perplexity=math.exp(-mean), mean_logprob=mean, tokens=len(token_logprobs),
                 token_logprobs=token_logprobs)
