"""The engine: load the models, run both generators, score every candidate, keep the lowest perplexity.

The server, the eval and the bench all call `Engine.complete_batch`.

Selection rule: the candidate with the lowest perplexity wins; exact ties go to the earlier candidate
in the list, which is ordered Qwen first, then diffusion by ascending hole length. With no scorer
loaded, every perplexity is +inf and the first candidate wins."""
from __future__ import annotations

import logging
import time
from typing import Callable

import torch

from .ar_fim import ArParams, PromptState, RowLimits, generate_fim_keep_prompt
from .ar_static import StaticGenerator
from .config import EngineConfig, compile_enabled, effective
from .diffusion import DiffusionParams, StaticPass, diffusion_infill
from .graphs import GraphCache, use_compile_cache
from .line_stop import LineStop
from .loading import LoadedModel, ModelLoadError, encode, load_model, mask_token_id, resolve_device, resolve_dtype
from .overlap import PromptHandoff, SideStage
from .requests import FimRequest
from .results import CancelCheck, Cancelled, Candidate, Completion, Generation, Score
from .scorer import ScoreItem, score_batch, score_from_logprobs, score_on_prompt
from .static_model import KVCache, StaticQwen2

log = logging.getLogger("fim_lsp.engine")
MODEL_FIELDS = ("ar_model", "dllm_model", "scorer_model", "models", "device", "dtype", "mask_token", "compile")
# Warm-up contexts (tokens) at load. CUDA: one per 64-token width bucket up to the server's budgets
# (1024 prefix + 256 suffix tokens), each capture costing about three passes; CPU: one, to compile.
WARMUP_TOKENS = {"cuda": tuple(range(61, 1280 + 64, 64)), "cpu": (256,)}


class OutOfMemory(RuntimeError):
    """The device ran out of memory; the message names the fixes."""


class Engine:
    def __init__(self, config: EngineConfig, notify: Callable[[str], None] | None = None) -> None:
        config.validate()
        self.config = config
        self.notify = notify or log.warning
        self.load_errors: dict[str, str] = {}
        self.ar: LoadedModel | None = None
        self.dllm: LoadedModel | None = None
        self.scorer: LoadedModel | None = None
        self.mask_id: int | None = None
        self.loaded = False
        self._progress: Callable[[str], None] | None = None
        self.static_ar: StaticGenerator | None = None  # the compiled paths (config.compile)
        self.static_dllm: StaticPass | None = None
        self._line_stop: LineStop | None = None
        self._side: SideStage | None = None  # the overlapped diffusion stage (config.overlap)

    # -- loading ---------------------------------------------------------------------------------
    def load(self, on_progress: Callable[[str], None] | None = None) -> None:
        """Load what `config.models` needs. A model that fails is reported once and skipped; only
        when no generator loads at all does this raise ModelLoadError. on_progress(message) is
        called before each model is read."""
        cfg = self.config
        self._progress = on_progress
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device)
        self.load_errors.clear()
        self.ar = self.dllm = self.scorer = None
        if cfg.models in ("both", "qwen"):
            self.ar = self._try_load(cfg.ar_model, "ar", device, dtype)
        if cfg.models in ("both", "dllm"):
            self.dllm = self._try_load(cfg.dllm_model, "dllm", device, dtype)
            if self.dllm is not None:
                try:
                    self.mask_id = mask_token_id(self.dllm.tokenizer, cfg.mask_token, cfg.dllm_model)
                except ModelLoadError as err:
                    self._fail("dllm", str(err))
                    self.dllm = None
        scorer_name = cfg.scorer_model or cfg.ar_model
        if scorer_name == cfg.ar_model and self.ar is not None:
            self.scorer = self.ar  # one copy in memory, shared
        elif scorer_name != cfg.ar_model or cfg.models == "dllm":
            self.scorer = self._try_load(scorer_name, "scorer", device, dtype)
        self.loaded = True
        if self.ar is None and self.dllm is None:
            raise ModelLoadError("; ".join(self.load_errors.values()) or "no model selected")
        self._line_stop = None
        self.static_ar = self.static_dllm = None
        if compile_enabled(cfg, device.type):
            self._build_static(device)

    @property
    def compiled(self) -> bool:
        """True when model passes run on the static path (graphs on CUDA, torch.compile on CPU)."""
        return self.static_ar is not None or self.static_dllm is not None

    def _build_static(self, device: torch.device) -> None:
        """Set up the static path and run a completion at each warm-up size, so the graphs the first
        requests need are captured (CUDA) or compiled (CPU) now rather than while the user waits."""
        if device.type != "cuda":
            use_compile_cache()
        if self.ar is not None:
            # CUDA: the decode step is captured as a graph; CPU has none, so it is compiled instead
            self.static_ar = StaticGenerator(self.ar, None if device.type == "cuda" else "default")
        if self.dllm is not None:
            self.static_dllm = StaticPass(StaticQwen2(self.dllm.model), GraphCache(device))
        tok = self.tokenizer
        line = encode(tok, "    value = compute(value, index)\n")
        for n in WARMUP_TOKENS[device.type]:
            if self._progress is not None:
                self._progress(f"warming up: {'capturing CUDA graphs' if device.type == 'cuda' else 'compiling'} "
                               f"for {n}-token contexts")
            ids = (line * (n // len(line) + 1))[:n]
            prefix, suffix = tok.decode(ids[: n * 3 // 4]), tok.decode(ids[n * 3 // 4:])
            for single in (True, False):  # the server sends one request at a time, in either mode
                self.complete_batch([FimRequest(prefix, suffix, single_line=single, max_new_tokens=2)])

    def _try_load(self, name: str, role: str, device: torch.device, dtype: torch.dtype) -> LoadedModel | None:
        if self._progress is not None:
            self._progress(f"loading the {role} model {name}")
        try:
            return load_model(name, role, device, dtype)
        except ModelLoadError as err:
            self._fail(role, str(err))
            return None

    def _fail(self, role: str, message: str) -> None:
        self.load_errors[role] = message
        self.notify(message)

    def reconfigure(self, config: EngineConfig) -> bool:
        """Take a new config; returns True when models must be reloaded (call load())."""
        config.validate()
        reload = any(getattr(config, f) != getattr(self.config, f) for f in MODEL_FIELDS)
        self.config = config
        if reload:
            self.loaded = False
        return reload

    @property
    def tokenizer(self):
        """The tokenizer context budgets are counted in: Qwen's, else the diffusion model's."""
        lm = self.ar or self.dllm
        return lm.tokenizer if lm is not None else None

    @property
    def available(self) -> list[str]:
        return [name for name, lm in (("qwen", self.ar), ("dllm", self.dllm)) if lm is not None]

    # -- completion ------------------------------------------------------------------------------
    def complete(self, prefix: str, suffix: str, dllm_length: int | None = None,
                 cancel: CancelCheck | None = None, single_line: bool = False) -> Completion:
        return self.complete_batch([FimRequest(prefix, suffix, dllm_length, single_line)], cancel)[0]

    def complete_batch(self, requests: list[FimRequest], cancel: CancelCheck | None = None) -> list[Completion]:
        if not self.loaded:
            self.load()
        try:
            return self._complete_batch(requests, cancel)
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # so the next, smaller request can run
            raise OutOfMemory(
                f"out of memory on {self._device()} completing {len(requests)} request(s). Fix: lower "
                f"maxPrefixTokens / maxSuffixTokens or dllmLengths, use dtype bfloat16, run one model "
                f"(models qwen|dllm), or device cpu") from None

    def _complete_batch(self, requests: list[FimRequest], cancel: CancelCheck | None) -> list[Completion]:
        device = self._device()
        cfg = effective(self.config, device.type)
        start = time.perf_counter()
        reuse = cfg.score_reuse and cfg.score_mode == "fim" and self.ar is not None and self.scorer is self.ar
        gens: list[list[Generation]] = [[] for _ in requests]
        known: dict[tuple[int, int], Score] = {}  # (request, candidate) scored by the diffusion stage
        timings: dict[str, float] = {}
        prompt = None
        # Eager, the stages take turns, also on a GPU: two Python threads launching kernels through one
        # interpreter measured 2.8x slower than turns. Replayed graphs leave the interpreter free, so on
        # the static path the diffusion stage runs beside Qwen (overlap.py, eval/BENCHMARKS.md).
        side, handoff = None, PromptHandoff()
        if self.static_dllm is not None and self.ar is not None and (
                cfg.overlap == "on" or (cfg.overlap == "auto" and device.type == "cuda")):
            side = self._side_stage().submit(lambda: self._dllm_stage(requests, cfg, cancel, handoff if reuse else None))
        if self.ar is not None:
            try:
                qwen, prompt = self._run_qwen(requests, cfg, cancel, handoff.put if side is not None else None)
            finally:
                handoff.close()
            for g, out in zip(gens, qwen):
                g.append(out)
            timings["qwen"] = self._lap(start)
            timings["qwen_prefill"] = qwen[0].prefill_seconds or 0.0
        if self.dllm is not None:
            if side is not None:
                (outs, side_scores, side_score_seconds), timings["dllm"] = side.result()
                if side_score_seconds is not None:
                    timings["dllm_score"] = side_score_seconds
            else:
                t = time.perf_counter()
                outs, side_scores = self._run_dllm(requests, cfg, cancel), None
                timings["dllm"] = self._lap(t)
            for k, (i, out) in enumerate(outs):
                gens[i].append(out)
                if side_scores is not None:
                    known[(i, len(gens[i]) - 1)] = side_scores[k]
        if cancel is not None and cancel():
            raise Cancelled()
        t = time.perf_counter()
        scores = self._score(requests, gens, cfg, prompt if reuse else None, known)
        timings["score"] = self._lap(t)
        timings["total"] = time.perf_counter() - start
        per_request = {k: v / len(requests) for k, v in timings.items()}
        return [self._select(g, s, per_request) for g, s in zip(gens, scores)]

    def _device(self) -> torch.device:
        return (self.ar or self.dllm).device

    def _lap(self, since: float) -> float:
        """Seconds since `since`, once this thread's stream has finished the stage's work."""
        if self._device().type == "cuda":
            torch.cuda.current_stream(self._device()).synchronize()
        return time.perf_counter() - since

    def _side_stage(self) -> SideStage:
        if self._side is None:
            self._side = SideStage(self._device())
        return self._side

    def _dllm_stage(self, requests: list[FimRequest], cfg: EngineConfig, cancel: CancelCheck | None,
                    handoff: PromptHandoff | None):
        """The diffusion candidates and, once Qwen's prompt is cached, their scores on it (the same
        math as the scoring stage's), so scoring after Qwen's last token is left with Qwen's own."""
        outs = self._run_dllm(requests, cfg, cancel)
        prompt = handoff.get() if handoff is not None else None
        if prompt is None:  # the stage runs only on the static path: the prompt is static_ar's
            return outs, None, None
        start = time.perf_counter()
        scores = self.static_ar.score(prompt, [(i, out.text) for i, out in outs])
        return outs, scores, time.perf_counter() - start

    def _run_qwen(self, requests: list[FimRequest], cfg: EngineConfig, cancel: CancelCheck | None,
                  on_prompt: Callable[[PromptState], None] | None = None):
        params = ArParams(cfg.temperature, cfg.top_p, cfg.top_k, cfg.max_new_tokens)
        # the single-line tables cost ~0.5 s to build: kept across requests
        limits = RowLimits([r.max_new_tokens or cfg.max_new_tokens for r in requests],
                           [r.single_line for r in requests], self._line_stop)
        pairs = [(r.prefix, r.suffix) for r in requests]
        generator = self._generator(self.ar, 0)
        try:
            if self.static_ar is not None:
                return self.static_ar.generate(pairs, params, generator, cancel, limits, on_prompt)
            return generate_fim_keep_prompt(self.ar, pairs, params, generator, cancel, limits)
        finally:
            self._line_stop = limits.line_stop

    def _run_dllm(self, requests: list[FimRequest], cfg: EngineConfig, cancel: CancelCheck | None):
        jobs = []
        for i, r in enumerate(requests):
            fixed = r.dllm_length or cfg.dllm_length
            tried = cfg.dllm_lengths_single_line if r.single_line else cfg.dllm_lengths
            for n in (fixed,) if fixed else sorted(set(tried)):
                jobs.append((i, (r.prefix, r.suffix, n)))
        params = DiffusionParams(cfg.steps, cfg.alg, cfg.temperature, cfg.top_p, cfg.top_k, cfg.alg_temp,
                                 cfg.eps, cfg.dllm_threshold, cfg.dllm_steps_per_token, cfg.dllm_cache_refresh)
        outs = diffusion_infill(self.dllm, self.mask_id, [job for _, job in jobs], params,
                                self._generator(self.dllm, 1), cancel, self.static_dllm)
        return [(i, out) for (i, _), out in zip(jobs, outs)]

    def _generator(self, lm: LoadedModel, offset: int) -> torch.Generator | None:
        # One generator per model, so a model's output does not depend on whether the other ran.
        if self.config.seed is None:
            return None
        return torch.Generator(device=lm.device).manual_seed(self.config.seed + offset)

    def _score(self, requests: list[FimRequest], gens: list[list[Generation]], cfg: EngineConfig,
               prompt: PromptState | None, known: dict[tuple[int, int], Score]) -> list[list[Score | None]]:
        if self.scorer is None:
            return [[None] * len(g) for g in gens]
        if prompt is None:
            flat = [ScoreItem(r.prefix, r.suffix, g.text) for r, gs in zip(requests, gens) for g in gs]
            scores = iter(score_batch(self.scorer, flat, cfg.score_mode))
            return [[next(scores) for _ in gs] for gs in gens]
        # On Qwen's cached prompt: its own middle is already scored by its generation log-probs
        # when those tokens are what the scorer would encode; the rest cost a pass over their tokens.
        out: list[list[Score | None]] = [[None] * len(gs) for gs in gens]
        todo = []
        for i, gs in enumerate(gens):
            for j, g in enumerate(gs):
                if (i, j) in known:
                    out[i][j] = known[(i, j)]
                    continue
                own = (g.model == "qwen" and g.end_logprob is not None
                       and encode(self.scorer.tokenizer, g.text) == g.token_ids)
                if own:
                    out[i][j] = score_from_logprobs([*g.logprobs, g.end_logprob])
                else:
                    todo.append((i, j, g.text))
        pairs = [(i, t) for i, _, t in todo]
        if isinstance(prompt.cache, KVCache) and self.static_ar is not None:
            scored = self.static_ar.score(prompt, pairs)
        else:
            scored = score_on_prompt(self.scorer, prompt, pairs)
        for (i, j, _), score in zip(todo, scored):
            out[i][j] = score
        return out

    @staticmethod
    def _select(gens: list[Generation], scores: list[Score | None], timings: dict[str, float]) -> Completion:
        cands = []
        for g, s in zip(gens, scores):
            cands.append(Candidate(
                model=g.model, text=g.text, tokens=len(g.token_ids), seconds=g.seconds,
                forward_passes=g.forward_passes, hole_length=g.hole_length,
                perplexity=s.perplexity if s else float("inf"),
                mean_logprob=s.mean_logprob if s else float("-inf"),
                token_logprobs=s.token_logprobs if s else []))
        winner = min(cands, key=lambda c: c.perplexity) if cands else None  # min keeps the first of ties
        return Completion(candidates=cands, winner=winner, timings=dict(timings))
