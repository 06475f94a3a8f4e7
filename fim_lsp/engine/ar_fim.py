"""Qwen2.5-Coder fill-in-the-middle generation: FIM prompt from ids, KV-cached batched decode."""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import torch

from .loading import LoadedModel, encode, special_id
from .results import CancelCheck, Cancelled, Generation
from .sampling import sample_tokens

FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE = "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"
# Any of these ends a completion: the model has left the hole.
STOP_TOKENS = ("<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
               "<|repo_name|>", "<|file_sep|>", "<|im_start|>", "<|im_end|>")



def _cache_kwarg(model) -> str:
    # transformers renamed past_key_values to cache during 5.x; accept both
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


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


def generate_fim(
    lm: LoadedModel,
    requests: list[tuple[str, str]],
    params: ArParams,
    generator: torch.Generator | None = None,
    cancel: CancelCheck | None = None,
) -> list[Generation]:
    """Generate one middle per (prefix, suffix), all in one left-padded batch."""
    start = time.perf_counter()
    tok, model, dev = lm.tokenizer, lm.model, lm.device
    prompts = [fim_ids(tok, p, s) for p, s in requests]
    stops = torch.tensor(stop_ids(tok), device=dev)
    pad = tok.pad_token_id if tok.pad_token_id is not None else int(stops[0])
    vocab = len(tok)  # rows past the tokenizer are padding in Qwen checkpoints: never sample them
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long, device=dev)
    attn = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p, device=dev)
        attn[row, width - len(p):] = 1

    out: list[list[int]] = [[] for _ in prompts]
    logprobs: list[list[float]] = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool, device=dev)
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    cache, step_ids, passes = None, ids, 0
    cache_kw = _cache_kwarg(model)
    with torch.inference_mode():
        for _ in range(params.max_new_tokens):
            if cancel is not None and cancel():
                raise Cancelled()
            res = model(input_ids=step_ids, attention_mask=attn, position_ids=positions,
                        use_cache=True, logits_to_keep=1, **{cache_kw: cache})
            passes += 1
            cache = getattr(res, "cache", None) or res.past_key_values
            logits = res.logits[:, -1, :vocab].float()
            _, nxt = sample_tokens(logits, params.temperature, params.top_p, params.top_k, generator=generator)
            lp = torch.log_softmax(logits, dim=-1).gather(-1, nxt[:, None]).squeeze(-1)
            stopped = torch.isin(nxt, stops)
            for row in (~done & ~stopped).nonzero().flatten().tolist():
                out[row].append(int(nxt[row]))
                logprobs[row].append(float(lp[row]))
            done |= stopped
            if bool(done.all()):
                break
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            step_ids = nxt[:, None]
            attn = torch.cat([attn, (~done).long()[:, None]], dim=1)
            positions = positions[:, -1:] + 1
    seconds = (time.perf_counter() - start) / len(prompts)
    return [Generation(model="qwen", text=tok.decode(o, skip_special_tokens=True), token_ids=o,
                       forward_passes=passes, seconds=seconds, logprobs=lp_row)
            for o, lp_row in zip(out, logprobs)]
