"""Qwen's runner, in the shape of gpt-fast: it owns its device, its CUDA stream, its KV cache (one per
batch size, allocated once), its graph sets and its failure handling, and runs every Qwen pass the
engine needs on token ids: the prompt pass (keeping what the cache already holds of each row's prompt),
the decode loop, and the scoring of more completions on a cached prompt.

The cache is left-aligned: row b's prompt sits at slots [0, L_b), its k-th decoded token at L_b + k, a
token's position is its slot, and a query sees the keys at slots up to its own. So row b's keys at
[0, p) stay valid for any later prompt that starts with the same p tokens, whatever the other rows
hold: `prefill(..., keep=True)` runs only the tokens past that common prefix.

Two modes run the same functions (so both paths share one cache layout, one prompt pass with reuse and
one scorer):
- static (compile on): on CUDA shapes padded to buckets, every pass replayed as a CUDA graph,
  attending over the whole cache; on CPU the decode step torch.compile'd over the whole cache, the
  prompt and scoring passes plain at exact shapes (as eager: see `padded`);
- eager (compile off, or after a fallback): exact shapes, plain calls, attending only over the slots
  the pass needs. transformers' own forward is not on either path; it is the reference the runner is
  checked against (tests/test_static_path.py, `python -m fim_lsp.selfcheck`).
At temperature 0 both modes emit the same tokens."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from .ar_fim import stop_ids
from .graphs import CaptureError, GraphBudget, GraphSet, bucket
from .int8_weights import supported
from .loading import LoadedModel, decode_whole, encode, special_id
from .placement import Placement
from .requests import ArParams, PromptState, RowLimits
from .results import CancelCheck, Cancelled, Generation, Score
from .sampling import sample_with_noise
from .scorer import score_from_logprobs
from .static_model import KVCache, StaticQwen2, cache_length

WIDTH_STEP = 64  # static mode: the prompt pass's new tokens padded to a multiple of this
SCORE_STEP = 16  # static mode: the tokens of scored completions padded to a multiple of this


@dataclass
class _RowCache:
    kv: KVCache
    number: int  # graph keys carry it: a graph never replays on a cache it was not captured on
    held: list[list[int]]  # per row: the tokens whose keys sit at slots [0, len)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class QwenRunner:
    def __init__(self, lm: LoadedModel, static: bool = False, decode_compile: str | None = None,
                 budget: GraphBudget | None = None, on_fallback: Callable[[str], None] | None = None,
                 int8_decode: bool = False) -> None:
        """int8_decode: the decode step multiplies by int8 copies of the weights (CPU only:
        fim_lsp/engine/int8_weights.py); its log-probs are then near the exact ones, not equal."""
        tok = lm.tokenizer
        self.lm = lm
        self.place = Placement(lm.device)
        self.device, self.cuda, self.stream = lm.device, self.place.cuda, self.place.stream
        self.on_stream, self._device = self.place.on_stream, self.place.device_context
        self.static = static
        self.on_fallback = on_fallback
        self.fallback: str | None = None  # why the static mode was turned off, once it was
        with self._device():  # whatever the wrapper allocates lands on the runner's cuda:N
            self.int8_decode = int8_decode and supported(lm.device)
            self.net = StaticQwen2(lm.model, int8=self.int8_decode)
            self.stops = torch.tensor(stop_ids(tok), device=self.device)
        capture = self.place.capture
        self.eos = special_id(tok, "<|endoftext|>")
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else int(self.stops[0])
        self.vocab = len(tok)  # rows past the tokenizer are padding: never sampled
        budget = budget if budget is not None else GraphBudget()
        # One set per stream the graphs replay on (a set's graphs share a memory pool): the prompt pass
        # and the decode steps in turn on this runner's stream; scoring also on the diffusion stage's.
        self.prompt_graphs = GraphSet(self.device, "qwen prompt", budget, capture)  # one shape per width
        self.decode_graphs = GraphSet(self.device, "qwen decode", budget, capture, decode_compile)
        self.score_graphs = GraphSet(self.device, "qwen score", budget, capture)
        self.caches: dict[int, _RowCache] = {}
        self._caches_made = 0
        self._last: PromptState | None = None  # the last generation's state while its keys are intact

    # -- ownership -------------------------------------------------------------------------------
    @property
    def graph_sets(self) -> list[GraphSet]:
        return [self.prompt_graphs, self.decode_graphs, self.score_graphs]

    def drop_graphs(self) -> None:
        for graphs in self.graph_sets:
            graphs.clear()

    def close(self) -> None:
        for graphs in self.graph_sets:
            graphs.close()
        self.caches.clear()

    def fall_back(self, reason: str) -> None:
        """Off the static mode for good (until the engine reloads): eager from now on. The graphs are
        dropped by the engine (`drop_graphs`) on the thread that runs requests, once none replays."""
        if not self.static:
            return
        self.static = False
        self.fallback = reason
        if self.on_fallback is not None:
            self.on_fallback(reason)

    @property
    def padded(self) -> bool:
        """The prompt and scoring passes take bucketed shapes and attend over the whole cache: only where
        they replay as CUDA graphs (one per shape). On CPU they run plain in either mode, so padding would
        only add work (a 259-token prompt padded to 320, attending over 2,048 slots): they take exact
        shapes, and only the compiled decode step keeps one static shape (the whole cache)."""
        return self.static and self.cuda

    def _run(self, graphs: GraphSet | None, key: tuple, make: Callable, inputs: list[torch.Tensor]) -> tuple:
        """One pass: replayed in static mode, plain otherwise (and where `graphs` is None). A capture
        that fails turns the static mode off and runs the pass plainly; out of memory turns it off and
        is raised to the engine."""
        if not self.static or graphs is None:
            return make()(*inputs)
        try:
            return graphs.run(key, make, inputs)
        except CaptureError as err:
            self.fall_back(f"qwen: capturing its passes as CUDA graphs failed ({err}); it runs on the eager "
                           f"path from now on. Set compile off to skip the capture.")
            return make()(*inputs)
        except torch.OutOfMemoryError:
            self.fall_back("qwen: out of memory on the static path (CUDA graphs); its graphs are freed and it "
                           "runs on the eager path from now on. Lower graphMemory, or set compile off.")
            raise

    def _cache(self, batch: int, need: int) -> _RowCache:
        rc = self.caches.get(batch)
        if rc is None or rc.kv.length < need:
            if rc is not None:  # graphs captured on the old buffer would hold it: drop them with it
                self.drop_graphs()
            if not self.static:  # no graph holds another batch size's buffer: keep one in memory
                self.caches.clear()
            with self._device():
                kv = self.net.new_cache(batch, cache_length(need))
            self._caches_made += 1
            rc = self.caches[batch] = _RowCache(kv, self._caches_made, [[] for _ in range(batch)])
        return rc

    # -- the prompt pass -------------------------------------------------------------------------
    def _prefill_fn(self, cache: KVCache, kv_len: int):
        keys = torch.arange(kv_len, device=self.device)

        def prefill(ids: torch.Tensor, slots: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor]:
            # a query sees the keys at slots up to its own: the row's kept prefix and its new tokens
            mask = (keys[None, None, :] <= slots[:, :, None])[:, None]
            logits = self.net.forward(ids, slots, mask, cache, write_at=slots, rows=last[:, None], kv_len=kv_len)
            return (torch.log_softmax(logits[:, 0].float(), dim=-1),)

        return prefill

    def prefill(self, prompts: list[list[int]], keep: bool = True, reserve: int = 0) -> PromptState:
        """Put each prompt (complete FIM prompt ids) in its row of the cache and return the state to
        decode or score from. keep: row b's keys of the longest common token prefix with the prompt the
        row held before are kept (all but the last token at most: its logits are needed), and the pass
        runs over the new tokens only. `reserve`: slots to leave free after the longest prompt (the
        decode budget). Call it on the thread that runs requests (e.g. to prefill while the user is
        idle): it rewrites the rows' cache."""
        with self.on_stream(), torch.inference_mode():
            return self._prefill(prompts, keep, reserve)

    def _prefill(self, prompts: list[list[int]], keep: bool, reserve: int) -> PromptState:
        if not prompts or any(not p for p in prompts):
            raise ValueError("every prompt needs at least one token")
        batch = len(prompts)
        lengths = [len(p) for p in prompts]
        rc = self._cache(batch, max(lengths) + reserve)
        kept = [min(common_prefix(h, p), len(p) - 1) if keep else 0 for h, p in zip(rc.held, prompts)]
        new = [n - k for n, k in zip(lengths, kept)]
        width = max(new)
        cap = rc.kv.length
        if self.padded:
            width = min(bucket(width, WIDTH_STEP), cap)
        ids = torch.full((batch, width), self.pad, dtype=torch.long)
        slots = torch.empty((batch, width), dtype=torch.long)
        for b, (p, k) in enumerate(zip(prompts, kept)):
            ids[b, : len(p) - k] = torch.tensor(p[k:])
            # padding queries write past the row's prompt (never read: no real query sits that far)
            slots[b] = torch.arange(k, k + width).clamp(max=cap - 1)
        last = torch.tensor([n - 1 for n in new])
        ids, slots, last = ids.to(self.device), slots.to(self.device), last.to(self.device)
        kv_len = cap if self.padded else max(lengths)
        # until the pass has run, a row holds only its kept prefix: a pass that fails half-way (out of
        # memory, cancelled) must not leave the next request keeping keys it never finished writing
        rc.held = [list(p[:k]) for p, k in zip(prompts, kept)]
        (logp,) = self._run(self.prompt_graphs if self.padded else None, ("prefill", rc.number, kv_len),
                            lambda: self._prefill_fn(rc.kv, kv_len), [ids, slots, last])
        rc.held = [list(p) for p in prompts]
        self._last = None  # the rows' decoded keys, if any, are gone
        return PromptState(cache=rc.kv, lengths=lengths, first_logprobs=logp.clone(), computed=sum(new),
                           reused=sum(kept))

    # -- decoding --------------------------------------------------------------------------------
    def _decode_fn(self, cache: KVCache, kv_len: int, params: ArParams):
        keys = torch.arange(kv_len, device=self.device)

        def decode(tok: torch.Tensor, slot: torch.Tensor, noise: torch.Tensor):
            mask = (keys[None, :] <= slot[:, None])[:, None, None, :]
            logits = self.net.forward(tok[:, None], slot[:, None], mask, cache, write_at=slot[:, None],
                                      kv_len=kv_len, int8=self.int8_decode)[:, -1].float()
            logp = torch.log_softmax(logits, dim=-1)
            nxt = sample_with_noise(logits[:, : self.vocab], noise, params.temperature, params.top_p, params.top_k)
            return nxt, logp.gather(-1, nxt[:, None])[:, 0], logp[:, self.eos]

        return decode

    def generate(self, prompts: list[list[int]], params: ArParams, generator: torch.Generator | None = None,
                 cancel: CancelCheck | None = None, limits: RowLimits | None = None,
                 on_prompt: Callable[[PromptState], None] | None = None,
                 keep: bool = True) -> tuple[list[Generation], PromptState]:
        """One middle per prompt, and the prompts' state for scoring. on_prompt gets that state as soon
        as the prompt pass is queued (the overlapped diffusion stage scores its candidates on it).
        Log-probs are over the full vocabulary rows, untempered, exactly as the scorer's."""
        with self.on_stream(), torch.inference_mode():
            return self._generate(prompts, params, generator, cancel, limits, on_prompt, keep)

    def _generate(self, prompts, params, generator, cancel, limits, on_prompt, keep):
        start = time.perf_counter()
        tok, dev = self.lm.tokenizer, self.device
        limits = limits or RowLimits.uniform(len(prompts), params)
        batch, most = len(prompts), max(limits.budgets)
        prompt = self._prefill(prompts, keep, most)
        if on_prompt is not None:
            on_prompt(prompt)
        rc = self.caches[batch]

        def noise() -> torch.Tensor:
            if params.temperature <= 0:
                return torch.zeros((batch, 1), device=dev)
            return torch.rand((batch, self.vocab), generator=generator, device=dev)

        first = prompt.first_logprobs
        nxt = sample_with_noise(first[:, : self.vocab], noise(), params.temperature, params.top_p, params.top_k)
        lp, eos_lp = first.gather(-1, nxt[:, None])[:, 0], first[:, self.eos]
        out_tok = torch.zeros((batch, most), dtype=torch.long, device=dev)
        out_lp = torch.zeros((batch, most), device=dev)
        kept = torch.zeros(batch, dtype=torch.long, device=dev)
        fed = torch.zeros(batch, dtype=torch.long, device=dev)  # tokens each row fed (keys in the cache)
        end_lp = torch.full((batch,), float("nan"), device=dev)
        done = torch.zeros(batch, dtype=torch.bool, device=dev)
        seen_text = torch.zeros_like(done)
        budgets = torch.tensor(limits.budgets, device=dev)
        single = torch.tensor(limits.single_line, device=dev)
        line_stop = limits.stop_tables(tok, dev)
        lengths = torch.tensor(prompt.lengths, device=dev)
        key = (params.temperature, params.top_p, params.top_k)
        passes, prefill_seconds = 1, None
        for step in range(most):
            stopped = ~done & torch.isin(nxt, self.stops)
            keep_tok = ~done & ~stopped
            out_tok[:, step] = nxt
            out_lp[:, step] = lp
            kept += keep_tok.long()
            end_lp = torch.where(stopped, eos_lp, end_lp)  # "the hole ends here", as the scorer asks
            done |= stopped
            if line_stop is not None:
                line_end, seen_text = line_stop.step(nxt, seen_text)
                done |= keep_tok & single & line_end
            done |= kept >= budgets
            if bool(done.all()):  # the one synchronisation per token
                break
            if prefill_seconds is None:
                prefill_seconds = time.perf_counter() - start
            if cancel is not None and cancel():
                raise Cancelled()
            fed += (~done).long()
            kv_len = rc.kv.length if self.static else max(prompt.lengths) + step + 1
            nxt, lp, eos_lp = self._run(self.decode_graphs, ("decode", rc.number, kv_len, *key),
                                        lambda: self._decode_fn(rc.kv, kv_len, params),
                                        [torch.where(done, self.pad, nxt), lengths + step, noise()])
            passes += 1
        counts, toks, lps, ends = kept.tolist(), out_tok.tolist(), out_lp.tolist(), end_lp.tolist()
        prompt.decoded = [row[:n] for row, n in zip(toks, fed.tolist())]
        self._last = prompt
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

    # -- the end token after a generation --------------------------------------------------------
    def end_logprobs(self, prompt: PromptState, items: list[tuple[int, list[int]]],
                     params: ArParams) -> list[float]:
        """log P(<|endoftext|> | row's prompt, tokens) for (row, tokens) pairs of the last generation,
        where `tokens` begin with what the row decoded (its own candidate, cut by a budget or a newline,
        so the loop never asked for the end token). The keys of all but the last token are still in the
        cache, so this is one decode step (the decode loop's own pass: its graph or compiled function),
        not a scoring pass over the tokens. With the tokens' own log-probs it gives the score `score`
        would, up to float rounding. ValueError when the cache no longer holds them."""
        if prompt is not self._last or prompt.decoded is None:
            raise ValueError("end_logprobs needs the state of the runner's last generation")
        out: dict[int, float] = {}
        feed: dict[int, tuple[int, int]] = {}  # row -> (its last token, that token's slot)
        for k, (row, tokens) in enumerate(items):
            if not tokens:  # the end token right after the prompt
                out[k] = float(prompt.first_logprobs[row, self.eos])
                continue
            done = prompt.decoded[row]
            if len(tokens) - 1 > len(done) or tokens[:-1] != done[: len(tokens) - 1]:
                raise ValueError(f"row {row}: the tokens are not what the row decoded")
            at = prompt.lengths[row] + len(tokens) - 1
            if feed.get(row, (tokens[-1], at)) != (tokens[-1], at):
                raise ValueError(f"row {row}: two different last tokens asked for in one step")
            feed[row] = (tokens[-1], at)
        if feed:
            with self.on_stream(), torch.inference_mode():
                eos_lp = self._step_at(self.caches[len(prompt.lengths)], feed, params).tolist()
            for k, (row, _) in enumerate(items):
                if k not in out:
                    out[k] = eos_lp[row]
        return [out[k] for k in range(len(items))]

    def warm_decode(self, params: ArParams, batch: int = 1) -> None:
        """One decode step on scratch slots, so the static decode step (compiled on a CPU, captured on
        CUDA) exists before the first request whatever the warm-up's generation wrote: on a CPU the
        prompt pass is no graph, and a generation that stops at its first token runs no decode step."""
        if self.static and batch in self.caches:
            with self.on_stream(), torch.inference_mode():
                self._step_at(self.caches[batch], {}, params)

    def _step_at(self, rc: _RowCache, feed: dict[int, tuple[int, int]], params: ArParams) -> torch.Tensor:
        """One decode step feeding row b's token at its slot (feed), padding at the last slot elsewhere;
        log P(<|endoftext|>) per row."""
        batch = len(rc.held)
        cap = rc.kv.length
        # rows with no token feed padding at the last slot (scratch: past every prompt and its decode room)
        tok = torch.full((batch,), self.pad, dtype=torch.long)
        slot = torch.full((batch,), cap - 1, dtype=torch.long)
        for row, (token, at) in feed.items():
            tok[row], slot[row] = token, at
        if params.temperature <= 0:
            noise = torch.zeros((batch, 1))
        else:  # the sampled token is thrown away: no draw from the caller's generator
            noise = torch.full((batch, self.vocab), 0.5)
        key = (params.temperature, params.top_p, params.top_k)
        kv_len = cap if self.static else max(at for _, at in feed.values()) + 1
        self._last = None  # padding overwrote what other rows held at the last slot
        _, _, eos_lp = self._run(self.decode_graphs, ("decode", rc.number, kv_len, *key),
                                 lambda: self._decode_fn(rc.kv, kv_len, params),
                                 [tok.to(self.device), slot.to(self.device), noise.to(self.device)])
        return eos_lp

    # -- scoring on a cached prompt ----------------------------------------------------------------
    def _score_fn(self, cache: KVCache, width: int, t: int):
        dev = self.device
        held_slots = torch.arange(width, device=dev)
        own = torch.arange(t, device=dev)
        causal = own[None, :] <= own[:, None]  # [t, t]

        def score(x: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, lengths: torch.Tensor):
            n = x.size(0)
            # the rows' prompt keys are read from the generator's cache (never written), then their own
            held = (held_slots[None, :] < lengths[:, None])[:, None, :].expand(n, t, width)
            mask = torch.cat([held, causal.expand(n, t, t)], dim=-1)[:, None]
            positions = lengths[:, None] + own
            logits = self.net.forward(x, positions, mask, prefix=(cache, rows, width))
            return (torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None])[..., 0],)

        return score

    def score(self, prompt: PromptState, items: list[tuple[int, str]]) -> list[Score]:
        """fim-mode scores of (prompt row, completion) pairs: `completion<|endoftext|>` after the row's
        cached prompt, one pass over the completions' own tokens. Equal to scorer.score_batch in fim
        mode on the same prompt ids, up to float rounding. Runs on the caller's stream."""
        if not items:
            return []
        dev = self.device
        conts = [encode(self.lm.tokenizer, text) + [self.eos] for _, text in items]
        rows = [r for r, _ in items]
        n, t = len(conts), max(len(c) for c in conts)
        width = max(prompt.lengths[r] for r in rows)
        if self.padded:
            width, t = min(bucket(width, WIDTH_STEP), prompt.cache.length), bucket(t, SCORE_STEP)
        x = torch.full((n, t), self.eos, dtype=torch.long)
        targets = torch.full((n, t), self.eos, dtype=torch.long)  # the token each position predicts
        for b, c in enumerate(conts):
            x[b, : len(c)] = torch.tensor(c)
            targets[b, : len(c) - 1] = torch.tensor(c[1:], dtype=torch.long)
        row_t = torch.tensor(rows, device=dev)
        lengths = torch.tensor([prompt.lengths[r] for r in rows], device=dev)
        number = next((rc.number for rc in self.caches.values() if rc.kv is prompt.cache), -1)
        with self._device(), torch.inference_mode():
            (logp,) = self._run(self.score_graphs if self.padded else None, ("score", number, width),
                                lambda: self._score_fn(prompt.cache, width, t),
                                [x.to(dev), targets.to(dev), row_t, lengths])
            logp = logp.tolist()
            firsts = prompt.first_logprobs[row_t, torch.tensor([c[0] for c in conts], device=dev)].tolist()
        return [score_from_logprobs([first, *row[: len(c) - 1]]) for first, row, c in zip(firsts, logp, conts)]
