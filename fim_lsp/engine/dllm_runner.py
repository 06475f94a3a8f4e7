"""Open-dCoder's runner: it owns the diffusion model's device, CUDA stream, graph set and DualCache K/V
buffers, and fills holes given as token ids.

Two paths:
- eager (compile off, or after a fallback): stock transformers' forward, sampled on the host: the
  reference path (`bidirectional.bidirectional_logits`, `dual_cache.dual_cache_logits`), independent of
  the static one, so it checks the graphs;
- static (compile on): the plain static-shape forward with the sampling inside each pass, the batch
  width padded to a multiple of `WIDTH_STEP`; each pass (with DualCache: each refresh and each block
  pass) replayed as a CUDA graph. At temperature 0 both paths write the same tokens; at a temperature
  the static path draws its own samples (one uniform per position) from the same distribution."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch

from .bidirectional import bidirectional_logits, static_full_pass, static_proposer
from .diffusion import END_TOKENS, DiffusionParams, Propose, logits_proposer, run_sampler
from .dual_cache import dual_cache_logits, static_dual_cache_pass
from .graphs import CaptureError, GraphBudget, GraphSet, bucket
from .loading import LoadedModel, decode_whole, special_id
from .placement import Placement
from .results import CancelCheck, Generation
from .static_model import KVCache, StaticQwen2, cache_length

WIDTH_STEP = 64  # static path: batch widths padded to a multiple of this, so graphs replay across requests
# A hole row: (prefix ids, suffix ids, hole length in tokens)
HoleRow = tuple[list[int], list[int], int]


@dataclass
class PathGap:
    """How far the static path's proposals are from the eager path's, on the same inputs at every step."""

    calls: int = 0
    max_conf_diff: float = 0.0  # largest |static - eager| confidence at any window position
    token_mismatches: int = 0  # window positions where the two proposed different tokens


class _StaticFailed(Exception):
    """The static path gave up inside a request: the request restarts on the eager path."""


class DllmRunner:
    def __init__(self, lm: LoadedModel, mask_id: int, static: bool = False, budget: GraphBudget | None = None,
                 on_fallback: Callable[[str], None] | None = None) -> None:
        self.lm = lm
        self.mask_id = mask_id
        self.place = Placement(lm.device)
        self.device, self.cuda, self.stream = lm.device, self.place.cuda, self.place.stream
        self.on_stream, self._device = self.place.on_stream, self.place.device_context
        self.static = static
        self.on_fallback = on_fallback
        self.fallback: str | None = None
        tok = lm.tokenizer
        self.ends = [i for i in (special_id(tok, t) for t in END_TOKENS) if i is not None]
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else self.ends[0]
        with self._device():
            self.net = StaticQwen2(lm.model)
        self.graphs = GraphSet(self.device, "dllm", budget, self.place.capture)
        # DualCache K/V: one buffer per batch size, made outside any capture (graphs hold its address),
        # and a view of its first `width` slots per request. A wider request gets a larger buffer;
        # graphs that captured views of the old one keep it alive through their closures.
        self.buffers: dict[int, tuple[int, KVCache]] = {}
        self.buffers_made = 0

    @property
    def graph_sets(self) -> list[GraphSet]:
        return [self.graphs]

    def drop_graphs(self) -> None:
        self.graphs.clear()
        self.buffers.clear()

    def close(self) -> None:
        self.graphs.close()
        self.buffers.clear()

    def fall_back(self, reason: str) -> None:
        if not self.static:
            return
        self.static = False  # the graphs are dropped by the engine, as QwenRunner.fall_back says
        self.fallback = reason
        if self.on_fallback is not None:
            self.on_fallback(reason)

    def buffer(self, batch: int, width: int) -> tuple[int, KVCache]:
        """(the buffer's number, a view of its first `width` slots) for DualCache on the static path."""
        number, whole = self.buffers.get(batch, (-1, None))
        if whole is None or whole.length < width:
            number, self.buffers_made = self.buffers_made, self.buffers_made + 1
            with self._device():
                whole = self.net.new_cache(batch, cache_length(width))
            self.buffers[batch] = (number, whole)
        return number, KVCache([k[:, :, :width] for k in whole.keys], [v[:, :, :width] for v in whole.values])

    def _run(self, key: tuple, make: Callable, inputs: list[torch.Tensor]) -> tuple:
        try:
            return self.graphs.run(key, make, inputs)
        except CaptureError as err:
            self.fall_back(f"dllm: capturing its passes as CUDA graphs failed ({err}); it runs on the eager "
                           f"path from now on. Set compile off to skip the capture.")
            raise _StaticFailed() from err
        except torch.OutOfMemoryError:
            self.fall_back("dllm: out of memory on the static path (CUDA graphs); its graphs are freed and it "
                           "runs on the eager path from now on. Lower graphMemory, or set compile off.")
            raise

    def infill(self, rows: list[HoleRow], params: DiffusionParams, generator: torch.Generator | None = None,
               cancel: CancelCheck | None = None) -> list[Generation]:
        """Fill each (prefix ids, suffix ids, hole length) in one right-padded batch."""
        with self.on_stream(), torch.inference_mode():
            if self.static:
                state = generator.get_state() if generator is not None else None
                try:
                    return self._infill(rows, params, generator, cancel, static=True)
                except _StaticFailed:
                    if state is not None:
                        generator.set_state(state)  # the eager rerun draws what it would have drawn
            return self._infill(rows, params, generator, cancel, static=False)

    def _batch(self, rows: list[HoleRow], static: bool) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        """x (right-padded), its valid columns, and each row's hole span."""
        dev, mid = self.device, self.mask_id
        seqs, spans = [], []
        for prefix, suffix, length in rows:
            seqs.append([*prefix, *[mid] * length, *suffix])
            spans.append((len(prefix), len(prefix) + length))
        width = max(len(r) for r in seqs)
        if static:
            width = bucket(width, WIDTH_STEP)
        x = torch.full((len(seqs), width), self.pad, dtype=torch.long, device=dev)
        valid = torch.zeros((len(seqs), width), dtype=torch.bool, device=dev)
        for b, r in enumerate(seqs):
            x[b, : len(r)] = torch.tensor(r, device=dev)
            valid[b, : len(r)] = True
        return x, valid, spans

    @staticmethod
    def _capped(rows: list[HoleRow], params: DiffusionParams) -> DiffusionParams:
        if params.steps_per_token is None:
            return params
        longest = max(length for _, _, length in rows)
        return replace(params, steps=max(1, min(params.steps, math.ceil(longest * params.steps_per_token))))

    def _infill(self, rows: list[HoleRow], params: DiffusionParams, generator: torch.Generator | None,
                cancel: CancelCheck | None, static: bool) -> list[Generation]:
        start = time.perf_counter()
        x, valid, spans = self._batch(rows, static)
        params = self._capped(rows, params)
        result = run_sampler(x, self.mask_id, self._proposer(x, valid, params, generator, static), params, generator,
                             cancel)
        seconds = (time.perf_counter() - start) / len(rows)
        out = []
        for b, (lo, hi) in enumerate(spans):
            hole = result.tokens[b, lo:hi].tolist()
            # The first end token closes the hole: the model chose a shorter middle.
            cut = next((j for j, t in enumerate(hole) if t in self.ends), len(hole))
            ids, text = decode_whole(self.lm.tokenizer, hole[:cut])
            out.append(Generation(model="dllm", text=text, token_ids=ids,
                                  forward_passes=result.passes[b], seconds=seconds, hole_length=hi - lo))
        return out

    def compare_paths(self, rows: list[HoleRow], params: DiffusionParams) -> PathGap:
        """Both paths' proposals on the same inputs at every step of the eager path's own run (the
        selfcheck's). Comparing two whole runs' texts breaks on a near-tie: a random model's positions
        can hold confidences 1e-9 apart, and the two paths sum in different orders. Needs the static path
        and a temperature of 0 (the eager proposals steer the run; no draws are compared)."""
        if not self.static or params.temperature > 0:
            raise ValueError("compare_paths needs the static path and temperature 0")
        with self.on_stream(), torch.inference_mode():
            params = self._capped(rows, params)
            x, valid, _ = self._batch(rows, static=False)
            xs, valid_s, _ = self._batch(rows, static=True)
            eager = self._proposer(x, valid, params, None, static=False)
            try:
                static = self._proposer(xs, valid_s, params, None, static=True)
            except _StaticFailed:
                raise RuntimeError(f"the static path fell back: {self.fallback}") from None
            gap = PathGap()
            padded = xs.clone()

            def both(full: torch.Tensor, window: torch.Tensor, confidence: str) -> tuple[torch.Tensor, torch.Tensor]:
                conf, tokens = eager(full, window, confidence)
                padded[:, : full.size(1)] = full
                conf_s, tokens_s = static(padded, window, confidence)
                gap.calls += 1
                gap.max_conf_diff = max(gap.max_conf_diff, float((conf_s - conf).abs().max()))
                gap.token_mismatches += int((tokens_s != tokens).sum())
                return conf, tokens

            run_sampler(x, self.mask_id, both, params)
        return gap

    def _proposer(self, x: torch.Tensor, valid: torch.Tensor, params: DiffusionParams,
                  generator: torch.Generator | None, static: bool) -> Propose:
        banned, vocab = [self.mask_id], len(self.lm.tokenizer)
        if not static:
            if params.cache_refresh > 0:
                fn = dual_cache_logits(self.lm, valid, x == self.mask_id, banned, params.cache_refresh)
            else:
                fn = bidirectional_logits(self.lm, valid, banned)
            return logits_proposer(fn, params, generator)
        if params.cache_refresh > 0:
            call = static_dual_cache_pass(self.net, self._run, self.buffer(*valid.shape), valid, x == self.mask_id,
                                          params.cache_refresh)
        else:
            call = static_full_pass(self.net, self._run, valid)
        return static_proposer(call, banned, vocab, params, generator, self.device)
