"""Qwen2.5-Coder fill-in-the-middle generation: FIM prompt from ids, KV-cached batched decode."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .line_stop import LineStop
from .loading import LoadedModel, cache_kwarg, decode_whole, encode, output_cache, special_id
from .results import CancelCheck, Cancelled, Generation
from .sampling import sample_tokens

FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE = "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"
# Any of these ends a completion: the model has left the hole.
STOP_TOKENS = ("<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
               "<|repo_name|>", "<|file_sep|>", "<|im_start|>", "<|im_end|>")


@dataclass
class ArParams:
    temperature: float = 0.6
    top_p: float | None = 0.95
    top_k: int | None = None
    max_new_tokens: int = 128


def fim_ids(tokenizer, prefix: str, suffix: str) -> list[int]:
    """`<|fim_prefix|>` P `<|fim_suffix|>` S `<|fim_middle|>`, each segment tokenized on its own."""
    fp, fs, fm = (special_id(tokenizer, t) for t in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE))
    if None in (fp, fs, fm):
        raise ValueError("the autoregressive model's tokenizer has no FIM tokens (<|fim_prefix|> ...)")
    return [fp, *encode(tokenizer, prefix), fs, *encode(tokenizer, suffix), fm]


def stop_ids(tokenizer) -> list[int]:
    return [i for i in (special_id(tokenizer, t) for t in STOP_TOKENS) if i is not None]


@dataclass
class RowLimits:
    """Per-request limits of one batch: token budgets, and which rows are single-line (those stop
    after the first newline that follows non-blank text; `line_stop` holds the tables)."""

    budgets: list[int]
    single_line: list[bool]
    line_stop: LineStop | None = None

    @classmethod
    def uniform(cls, n: int, params: ArParams) -> "RowLimits":
        return cls([params.max_new_tokens] * n, [False] * n)

    def stop_tables(self, lm: LoadedModel) -> LineStop | None:
        """The single-line tables when some row needs them, built on first use."""
        if not any(self.single_line):
            return None
        if self.line_stop is None:
            self.line_stop = LineStop.from_tokenizer(lm.tokenizer, lm.device)
        return self.line_stop


@dataclass
class PromptState:
    """What the scorer needs to score more completions on the already-encoded FIM prompts."""

    cache: object  # the KV cache of the prompts: transformers DynamicCache, or static_model.KVCache
    attn: torch.Tensor  # [B, W] left-padded prompt mask
    first_logprobs: torch.Tensor  # [B, V] log P(first middle token | prompt), full vocabulary rows


def generate_fim(
    lm: LoadedModel,
    requests: list[tuple[str, str]],
    params: ArParams,
    generator: torch.Generator | None = None,
    cancel: CancelCheck | None = None,
    limits: RowLimits | None = None,
) -> list[Generation]:
    """Generate one middle per (prefix, suffix), all in one left-padded batch."""
    return generate_fim_keep_prompt(lm, requests, params, generator, cancel, limits)[0]


def generate_fim_keep_prompt(
    lm: LoadedModel,
    requests: list[tuple[str, str]],
    params: ArParams,
    generator: torch.Generator | None = None,
    cancel: CancelCheck | None = None,
    limits: RowLimits | None = None,
) -> tuple[list[Generation], PromptState]:
    """generate_fim, also returning the prompts' KV cache for scoring other completions on it.
    Log-probs are taken over the full vocabulary rows, untempered, exactly as the scorer's."""
    start = time.perf_counter()
    limits = limits or RowLimits.uniform(len(requests), params)
    line_stop = limits.stop_tables(lm)
    tok, model, dev = lm.tokenizer, lm.model, lm.device
    prompts = [fim_ids(tok, p, s) for p, s in requests]
    stops = torch.tensor(stop_ids(tok), device=dev)
    eos = special_id(tok, "<|endoftext|>")
    pad = tok.pad_token_id if tok.pad_token_id is not None else int(stops[0])
    vocab = len(tok)  # rows past the tokenizer are padding in Qwen checkpoints: never sample them
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long, device=dev)
    attn = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p, device=dev)
        attn[row, width - len(p):] = 1
    prompt_attn = attn

    out: list[list[int]] = [[] for _ in prompts]
    logprobs: list[list[float]] = [[] for _ in prompts]
    end_logprob: list[float | None] = [None] * len(prompts)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=dev)
    single = torch.tensor(limits.single_line, device=dev)
    seen_text = torch.zeros_like(done)
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    cache, step_ids, passes, first = None, ids, 0, None
    cache_kw = cache_kwarg(model)
    prefill_seconds = 0.0
    with torch.inference_mode():
        for _ in range(max(limits.budgets)):
            if cancel is not None and cancel():
                raise Cancelled()
            res = model(input_ids=step_ids, attention_mask=attn, position_ids=positions,
                        use_cache=True, logits_to_keep=1, **{cache_kw: cache})
            passes += 1
            if passes == 1:
                prefill_seconds = time.perf_counter() - start
            cache = output_cache(res)
            full = torch.log_softmax(res.logits[:, -1].float(), dim=-1)
            if first is None:
                first = full
            _, nxt = sample_tokens(res.logits[:, -1, :vocab].float(), params.temperature, params.top_p,
                                   params.top_k, generator=generator)
            lp = full.gather(-1, nxt[:, None]).squeeze(-1)
            stopped = torch.isin(nxt, stops)
            for row in (~done & ~stopped).nonzero().flatten().tolist():
                out[row].append(int(nxt[row]))
                logprobs[row].append(float(lp[row]))
            for row in (~done & stopped).nonzero().flatten().tolist():
                end_logprob[row] = float(full[row, eos])  # "the hole ends here", as the scorer asks
            done |= stopped
            if line_stop is not None:
                line_end, seen_text = line_stop.step(nxt, seen_text)
                done |= single & line_end
            done |= torch.tensor([len(o) >= b for o, b in zip(out, limits.budgets)], device=dev)
            if bool(done.all()):
                break
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            step_ids = nxt[:, None]
            attn = torch.cat([attn, (~done).long()[:, None]], dim=1)
            positions = positions[:, -1:] + 1
    seconds = (time.perf_counter() - start) / len(prompts)
    gens = []
    for o, lp_row, end in zip(out, logprobs, end_logprob):
        kept, text = decode_whole(tok, o)
        gens.append(Generation(model="qwen", text=text, token_ids=kept, forward_passes=passes, seconds=seconds,
                               logprobs=lp_row[: len(kept)], end_logprob=end if kept == o else None,
                               prefill_seconds=prefill_seconds))
    for layer in cache.layers:  # back to the prompts alone
        layer.keys, layer.values = layer.keys[:, :, :width], layer.values[:, :, :width]
    return gens, PromptState(cache=cache, attn=prompt_attn, first_logprobs=first)
