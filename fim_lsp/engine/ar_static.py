"""Qwen FIM generation on the static path: a KV cache allocated once, the prompt pass and the decode step
replayed as CUDA graphs (torch.compile'd on CPU), sampling on the device, and one host synchronisation
per token: the stop check. At temperature 0 it emits the eager path's tokens (tests/test_static_path.py).

Shapes are bucketed so graphs replay across requests: the prompt width to a multiple of 64 (more left
padding), the cache by `cache_length`."""
from __future__ import annotations

import time
from typing import Callable

import torch

from .ar_fim import ArParams, PromptState, RowLimits, fim_ids, stop_ids
from .graphs import GraphCache, bucket
from .loading import LoadedModel, decode_whole, encode, special_id
from .results import CancelCheck, Cancelled, Generation, Score
from .sampling import sample_with_noise
from .scorer import score_from_logprobs
from .static_model import KVCache, StaticQwen2, cache_length

WIDTH_STEP = 64
class StaticGenerator:
    def __init__(self, lm: LoadedModel, decode_compile: str | None = None) -> None:
        tok = lm.tokenizer
        self.lm = lm
        self.net = StaticQwen2(lm.model)
        self.stops = torch.tensor(stop_ids(tok), device=lm.device)
        self.eos = special_id(tok, "<|endoftext|>")
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else int(self.stops[0])
        self.vocab = len(tok)  # rows past the tokenizer are padding: never sampled
        self.graphs = GraphCache(lm.device, decode_compile)  # the decode step
        self.prompt_graphs = GraphCache(lm.device)  # one shape per width bucket: not worth compiling on CPU
        self.score_graphs = GraphCache(lm.device)
        self.caches: dict[tuple[int, int], KVCache] = {}

    def _cache(self, batch: int, length: int) -> KVCache:
        if (batch, length) not in self.caches:
            self.caches[(batch, length)] = self.net.new_cache(batch, length)
        return self.caches[(batch, length)]

    def _sampled(self, logits: torch.Tensor, noise: torch.Tensor, params: ArParams):
        logp = torch.log_softmax(logits, dim=-1)
        nxt = sample_with_noise(logits[:, : self.vocab], noise, params.temperature, params.top_p, params.top_k)
        return nxt, logp.gather(-1, nxt[:, None])[:, 0], logp[:, self.eos], logp

    def _prefill_fn(self, cache: KVCache, width: int, params: ArParams):
        slots = torch.arange(cache.length, device=self.lm.device)
        query = torch.arange(width, device=self.lm.device)
        last = query[-1:]

        def prefill(ids, positions, kv_valid, noise):
            # a left-pad query sees its own slot, so no row of the softmax is empty (NaN keys otherwise)
            mask = (kv_valid[:, None, :] & (slots[None, :] <= query[:, None])) | (slots[None, :] == query[:, None])
            logits = self.net.forward(ids, positions, mask[:, None], cache, query, rows=last)[:, -1].float()
            return self._sampled(logits, noise, params)

        return prefill

    def _decode_fn(self, cache: KVCache, params: ArParams):
        slots = torch.arange(cache.length, device=self.lm.device)

        def decode(tok, pos, slot, kv_valid, noise):
            mask = (kv_valid & (slots <= slot))[:, None, None, :]
            logits = self.net.forward(tok[:, None], pos[:, None], mask, cache, slot)[:, -1].float()
            return self._sampled(logits, noise, params)[:3]

        return decode

    def generate(self, requests: list[tuple[str, str]], params: ArParams, generator: torch.Generator | None = None,
                 cancel: CancelCheck | None = None, limits: RowLimits | None = None,
                 on_prompt: Callable[[PromptState], None] | None = None) -> tuple[list[Generation], PromptState]:
        """Generate, and return the prompts' state for scoring; on_prompt gets that state as soon as the
        prompt pass is queued (the overlapped diffusion stage scores its candidates on it)."""
        start = time.perf_counter()
        tok, dev = self.lm.tokenizer, self.lm.device
        limits = limits or RowLimits.uniform(len(requests), params)
        prompts = [fim_ids(tok, p, s) for p, s in requests]
        batch, width = len(prompts), bucket(max(len(p) for p in prompts), WIDTH_STEP)
        most = max(limits.budgets)
        cache = self._cache(batch, cache_length(width + most))
        ids = torch.full((batch, width), self.pad, dtype=torch.long)
        valid = torch.zeros((batch, width), dtype=torch.bool)
        for row, p in enumerate(prompts):
            ids[row, width - len(p):] = torch.tensor(p)
            valid[row, width - len(p):] = True
        ids, valid = ids.to(dev), valid.to(dev)
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        kv_valid = torch.ones((batch, cache.length), dtype=torch.bool, device=dev)
        kv_valid[:, :width] = valid  # slots past the prompt: the causal rule alone decides
        key = (params.temperature, params.top_p, params.top_k, cache.length)

        def noise() -> torch.Tensor:
            if params.temperature <= 0:
                return torch.zeros((batch, 1), device=dev)
            return torch.rand((batch, self.vocab), generator=generator, device=dev)

        with torch.inference_mode():
            nxt, lp, eos_lp, first = self.prompt_graphs.run(("prefill", *key), lambda: self._prefill_fn(cache, width, params),
                                                     [ids, positions, kv_valid, noise()])
            prompt = PromptState(cache=cache, attn=valid, first_logprobs=first.clone())
            if on_prompt is not None:
                on_prompt(prompt)
            out_tok = torch.zeros((batch, most), dtype=torch.long, device=dev)
            out_lp = torch.zeros((batch, most), device=dev)
            kept = torch.zeros(batch, dtype=torch.long, device=dev)
            end_lp = torch.full((batch,), float("nan"), device=dev)
            done = torch.zeros(batch, dtype=torch.bool, device=dev)
            seen_text = torch.zeros_like(done)
            budgets = torch.tensor(limits.budgets, device=dev)
            single = torch.tensor(limits.single_line, device=dev)
            line_stop = limits.stop_tables(self.lm)
            last_pos = positions[:, -1]
            passes, prefill_seconds = 1, None
            for step in range(most):
                stopped = ~done & torch.isin(nxt, self.stops)
                keep = ~done & ~stopped
                out_tok[:, step] = nxt
                out_lp[:, step] = lp
                kept += keep.long()
                end_lp = torch.where(stopped, eos_lp, end_lp)  # "the hole ends here", as the scorer asks
                done |= stopped
                if line_stop is not None:
                    line_end, seen_text = line_stop.step(nxt, seen_text)
                    done |= keep & single & line_end
                done |= kept >= budgets
                if bool(done.all()):  # the one synchronisation per token
                    break
                if prefill_seconds is None:
                    prefill_seconds = time.perf_counter() - start
                if cancel is not None and cancel():
                    raise Cancelled()
                slot = torch.full((1,), width + step, dtype=torch.long, device=dev)
                nxt, lp, eos_lp = self.graphs.run(("decode", *key), lambda: self._decode_fn(cache, params),
                                                  [torch.where(done, self.pad, nxt), last_pos + 1 + step, slot,
                                                   kv_valid, noise()])
                passes += 1
            counts, toks, lps, ends = kept.tolist(), out_tok.tolist(), out_lp.tolist(), end_lp.tolist()
        seconds = (time.perf_counter() - start) / batch
        gens = []
        for row in range(batch):
            ids_row, text = decode_whole(tok, toks[row][: counts[row]])
            end = None if ends[row] != ends[row] else ends[row]  # NaN: stopped by a budget or a newline
            end = end if len(ids_row) == counts[row] else None
            gens.append(Generation(model="qwen", text=text, token_ids=ids_row,
                                   forward_passes=passes, seconds=seconds, logprobs=lps[row][: len(ids_row)],
                                   end_logprob=end, prefill_seconds=prefill_seconds or seconds * batch))
        return gens, prompt

    def _score_fn(self, src: KVCache, width: int, t: int):
        dev = self.lm.device
        query, slots = torch.arange(t, device=dev), torch.arange(width + t, device=dev)

        def score(x, targets, positions, prompt_valid, rows):
            n = x.size(0)
            # the rows' prompt keys, copied inside the graph from the generator's cache (a fixed address)
            grow = lambda kv: torch.cat([kv[rows, :, :width], kv.new_zeros(n, kv.size(1), t, kv.size(3))], dim=2)  # noqa: E731
            cache = KVCache([grow(k) for k in src.keys], [grow(v) for v in src.values])
            kv_valid = torch.cat([prompt_valid, torch.ones((n, t), dtype=torch.bool, device=dev)], dim=1)
            mask = kv_valid[:, None, :] & (slots[None, :] <= width + query[:, None])
            logits = self.net.forward(x, positions, mask[:, None], cache, width + query)
            return (torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None])[..., 0],)

        return score

    def score(self, prompt: PromptState, items: list[tuple[int, str]]) -> list[Score]:
        """scorer.score_on_prompt on this path's prompt cache (fim mode): one replayed pass over the
        completions' own tokens (their count bucketed to 16), attending to their prompt's keys."""
        if not items:
            return []
        dev = self.lm.device
        conts = [encode(self.lm.tokenizer, text) + [self.eos] for _, text in items]
        rows = torch.tensor([r for r, _ in items], device=dev)
        n, width, t = len(conts), prompt.attn.size(1), bucket(max(len(c) for c in conts), 16)
        x = torch.full((n, t), self.eos, dtype=torch.long)
        targets = torch.full((n, t), self.eos, dtype=torch.long)  # the token each position predicts
        for b, c in enumerate(conts):
            x[b, : len(c)] = torch.tensor(c)
            targets[b, : len(c) - 1] = torch.tensor(c[1:], dtype=torch.long)
        prompt_valid = prompt.attn[rows]
        positions = prompt_valid.long().sum(-1, keepdim=True) + torch.arange(t, device=dev)
        src: KVCache = prompt.cache  # type: ignore[assignment]
        with torch.inference_mode():
            (logp,) = self.score_graphs.run(("score", id(src), width), lambda: self._score_fn(src, width, t),
                                            [x.to(dev), targets.to(dev), positions, prompt_valid, rows])
            logp = logp.tolist()
        firsts = prompt.first_logprobs[rows, torch.tensor([c[0] for c in conts], device=dev)].tolist()
        return [score_from_logprobs([first, *row[: len(c) - 1]]) for first, row, c in zip(firsts, logp, conts)]
