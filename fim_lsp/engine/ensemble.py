"""The engine: load the models, run both generators, score every candidate, keep the lowest perplexity.

The server, the eval and the bench all call `Engine.complete_batch`. Each model runs through its runner
(`qwen_runner.QwenRunner`, `dllm_runner.DllmRunner`), which owns its device, stream, caches and graphs.

Selection rule: the candidate with the lowest perplexity wins; exact ties go to the earlier candidate
in the list, which is ordered Qwen first, then diffusion by ascending hole length. With no scorer
loaded, every perplexity is +inf and the first candidate wins.

Failure: a runner whose graph capture fails goes on eagerly and says so (`fallbacks`, `notify`). Out of
memory during a request frees the graphs, turns the static path off and retries the request once on the
eager path; a second failure is reported as `OutOfMemory`, whose message names the settings that help."""
from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .config import EngineConfig, compile_enabled, effective, int8_decode_enabled
from .diffusion import DiffusionParams
from .dllm_runner import DllmRunner, HoleRow
from .graphs import GraphBudget, use_compile_cache
from .line_stop import LineStop
from .loading import LoadedModel, ModelLoadError, encode, load_model, mask_token_id, resolve_device, resolve_dtype
from .overlap import PromptHandoff, SideJob, SideStage
from .prompt import DllmPrompt, QwenPrompt, SegmentCache, dllm_prompt, qwen_prompt
from .qwen_runner import QwenRunner
from .requests import ArParams, FimRequest, PromptState, RowLimits
from .results import CancelCheck, Cancelled, Candidate, Completion, Generation, Score
from .scorer import ScoreItem, score_batch, score_from_logprobs

log = logging.getLogger("fim_lsp.engine")
MODEL_FIELDS = ("ar_model", "dllm_model", "scorer_model", "models", "device", "dtype", "mask_token", "compile",
                "decode_weights")
# Warm-up contexts (tokens) at load. CUDA: one per 64-token width bucket up to the server's budgets
# (1024 prefix + 256 suffix tokens), each capture costing about three passes; CPU: one, to compile.
WARMUP_TOKENS = {"cuda": tuple(range(61, 1280 + 64, 64)), "cpu": (256,)}
MB = 2**20


class OutOfMemory(RuntimeError):
    """The device ran out of memory; the message names the fixes."""


@dataclass
class Prompts:
    """What each model is given for a batch of requests (one entry per request), as built by
    `prompt.py`: the ids, and the text and context chunks behind them (fimLsp.showPrompt shows them)."""

    qwen_prompts: list[QwenPrompt] | None  # Qwen's complete FIM prompts
    scorer: list[list[int]] | None  # the scorer's FIM prompts (Qwen's when the scorer is Qwen)
    dllm_prompts: list[DllmPrompt] | None  # the diffusion model's prefix and suffix ids

    @property
    def qwen(self) -> list[list[int]] | None:
        return None if self.qwen_prompts is None else [p.ids for p in self.qwen_prompts]

    @property
    def dllm(self) -> list[tuple[list[int], list[int]]] | None:
        return None if self.dllm_prompts is None else [(p.prefix_ids, p.suffix_ids) for p in self.dllm_prompts]


def dllm_jobs(requests: list[FimRequest], ids: list[tuple[list[int], list[int]]],
              cfg: EngineConfig) -> tuple[list[tuple[int, HoleRow]], DiffusionParams]:
    """The diffusion stage's hole rows, each with its request's index (one per hole length tried), and
    its sampling settings."""
    jobs: list[tuple[int, HoleRow]] = []
    for i, (r, (prefix, suffix)) in enumerate(zip(requests, ids)):
        fixed = r.dllm_length or cfg.dllm_length
        tried = cfg.dllm_lengths_single_line if r.single_line else cfg.dllm_lengths
        for n in (fixed,) if fixed else sorted(set(tried)):
            jobs.append((i, (prefix, suffix, n)))
    params = DiffusionParams(cfg.steps, cfg.alg, cfg.temperature, cfg.top_p, cfg.top_k, cfg.alg_temp,
                             cfg.eps, cfg.dllm_threshold, cfg.dllm_steps_per_token, cfg.dllm_cache_refresh)
    return jobs, params


class Engine:
    def __init__(self, config: EngineConfig, notify: Callable[[str], None] | None = None,
                 warmup_tokens: tuple[int, ...] | None = None) -> None:
        config.validate()
        self.config = config
        self.notify = notify or log.warning
        self.warmup_tokens = warmup_tokens  # None: WARMUP_TOKENS for the device
        self.load_errors: dict[str, str] = {}
        # why a model's static path (CUDA graphs) is off although compile asked for it; shown with the
        # load's outcome, in fimLsp.stats and in the hover
        self.fallbacks: dict[str, str] = {}
        self.warmup_note: str | None = None
        self.ar: LoadedModel | None = None
        self.dllm: LoadedModel | None = None
        self.scorer: LoadedModel | None = None
        self.mask_id: int | None = None
        self.loaded = False  # True only once every model and its runner is ready (warm-up included)
        self._progress: Callable[[str], None] | None = None
        self.qwen: QwenRunner | None = None
        self.diffusion: DllmRunner | None = None
        self.budget = GraphBudget()
        self._line_stop: LineStop | None = None
        self._side: SideStage | None = None  # the overlapped diffusion stage (config.overlap)
        self._segment_caches: dict[int, SegmentCache] = {}

    # -- loading ---------------------------------------------------------------------------------
    def load(self, on_progress: Callable[[str], None] | None = None) -> None:
        """Load what `config.models` needs. A model that fails is reported once and skipped; only
        when no generator loads at all does this raise ModelLoadError. on_progress(message) is
        called before each model is read and at each warm-up size."""
        cfg = self.config
        self._progress = on_progress
        self.loaded = False
        self._teardown()
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device)
        self.load_errors.clear()
        self.fallbacks = {}
        self.warmup_note = None
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
        if self.ar is None and self.dllm is None:
            raise ModelLoadError("; ".join(self.load_errors.values()) or "no model selected")
        static = compile_enabled(cfg, device.type)
        self.budget = GraphBudget(self._graph_limit(device) if static else None)
        if self.ar is not None:
            # CUDA: the decode step is captured as a graph; CPU has none, so it is compiled instead
            self.qwen = QwenRunner(self.ar, static, None if device.type == "cuda" else "default", self.budget,
                                   self._on_fallback("qwen"), int8_decode_enabled(cfg, device.type))
        if self.dllm is not None:
            self.diffusion = DllmRunner(self.dllm, self.mask_id, static, self.budget, self._on_fallback("dllm"))
        if static:
            self._warm_up(device)
        self.loaded = True

    def _graph_limit(self, device: torch.device) -> int | None:
        """The graphs' memory budget in bytes; None where nothing is captured (CPU)."""
        if device.type != "cuda":
            return None
        if self.config.graph_memory != "auto":
            return int(self.config.graph_memory) * MB
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2  # the other half: KV caches, eager passes, the other stage's activations

    def _teardown(self) -> None:
        """Before a (re)load: the side stage's thread ends, the runners' graphs and caches go."""
        if self._side is not None:
            self._side.close()
            self._side = None
        for runner in self.runners:
            runner.close()
        self._segment_caches.clear()  # they hold the old tokenizers
        self.qwen = self.diffusion = None
        self._line_stop = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @property
    def runners(self) -> list[Any]:
        return [r for r in (self.qwen, self.diffusion) if r is not None]

    @property
    def compiled(self) -> bool:
        """True when model passes run on the static path (graphs on CUDA, torch.compile on CPU)."""
        return any(r.static for r in self.runners)

    def _on_fallback(self, role: str) -> Callable[[str], None]:
        def fallback(reason: str) -> None:
            self.fallbacks = {**self.fallbacks, role: reason}  # a new dict: other threads read it
            self.notify(reason)
        return fallback

    def _warm_up(self, device: torch.device) -> None:
        """Run a completion at each warm-up size, so the graphs the first requests need are captured
        (CUDA) or compiled (CPU) now rather than while the user waits. Captures take the process-wide
        capture lock, one after another, each runner on its own capture stream; past the graph memory
        budget the remaining sizes are left to run uncaptured."""
        if device.type != "cuda":
            use_compile_cache()
        tok = self.tokenizer
        line = encode(tok, "    value = compute(value, index)\n")
        for n in self.warmup_tokens or WARMUP_TOKENS[device.type]:
            if not self.compiled:
                break
            if not self.budget.fits(0):
                self.warmup_note = (f"the graph memory budget ({self.budget.limit // MB} MB, graphMemory) was "
                                    f"reached before the {n}-token warm-up: longer contexts run uncaptured")
                log.info("%s", self.warmup_note)
                break
            if self._progress is not None:
                self._progress(f"warming up: {'capturing CUDA graphs' if device.type == 'cuda' else 'compiling'} "
                               f"for {n}-token contexts")
            ids = (line * (n // len(line) + 1))[:n]
            prefix, suffix = tok.decode(ids[: n * 3 // 4]), tok.decode(ids[n * 3 // 4:])
            for single in (True, False):  # the server sends one request at a time, in either mode
                fallen = set(self.fallbacks)
                try:
                    # keep=False: the prompt pass runs at this size, not over what the last one left
                    self._complete_batch([FimRequest(prefix, suffix, single_line=single, max_new_tokens=2)],
                                         None, keep=False)
                    if self.qwen is not None:  # the decode step too, even where Qwen stopped at once
                        self.qwen.warm_decode(ArParams(self.config.temperature, self.config.top_p, self.config.top_k))
                except torch.OutOfMemoryError:
                    if set(self.fallbacks) == fallen:  # outside the runners' graphs: all of them off
                        self._static_off("out of memory while warming up the static path (CUDA graphs) at "
                                         "load; completions run on the eager path. Lower graphMemory or set "
                                         "compile off.")
                    self._free()
                finally:
                    self._drop_dead_graphs()

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
        """Take a new config; returns True when models must be reloaded (call load()). A new
        graphMemory applies at once: graphs past it are evicted, least recently used first. Call it on
        the thread that runs the requests."""
        config.validate()
        reload = any(getattr(config, f) != getattr(self.config, f) for f in MODEL_FIELDS)
        budget_changed = config.graph_memory != self.config.graph_memory
        self.config = config
        if reload:
            self.loaded = False
        elif budget_changed and self.budget.limit is not None and self.runners:
            self.budget.limit = self._graph_limit(self.runners[0].device)
            for runner in self.runners:
                for graphs in runner.graph_sets:
                    graphs._make_room(0)
        return reload

    @property
    def tokenizer(self):
        """The tokenizer context budgets are counted in: Qwen's, else the diffusion model's."""
        lm = self.ar or self.dllm
        return lm.tokenizer if lm is not None else None

    @property
    def available(self) -> list[str]:
        return [name for name, lm in (("qwen", self.ar), ("dllm", self.dllm)) if lm is not None]

    def graph_stats(self) -> dict[str, Any]:
        """The captured graphs, for fimLsp.stats and the hover."""
        sets = [g for r in self.runners for g in r.graph_sets]
        return {"count": sum(g.count for g in sets), "bytes": sum(g.bytes for g in sets),
                "budgetBytes": self.budget.limit, "evicted": sum(g.evicted for g in sets),
                "uncaptured": sum(g.uncaptured for g in sets),
                "static": {name: r.static for name, r in (("qwen", self.qwen), ("dllm", self.diffusion))
                           if r is not None},
                "fallbacks": dict(self.fallbacks), "warmup": self.warmup_note}

    # -- completion ------------------------------------------------------------------------------
    def complete(self, prefix: str, suffix: str, dllm_length: int | None = None,
                 cancel: CancelCheck | None = None, single_line: bool = False) -> Completion:
        return self.complete_batch([FimRequest(prefix, suffix, dllm_length, single_line)], cancel)[0]

    def complete_batch(self, requests: list[FimRequest], cancel: CancelCheck | None = None) -> list[Completion]:
        if not self.loaded:
            self.load()
        static, before = self.compiled, self.fallbacks
        try:
            try:
                out = self._complete_batch(requests, cancel)
            except torch.OutOfMemoryError:
                self._free()
                if not static:
                    raise
                # the static path's graphs hold memory the eager path can use: free them, retry once
                self._static_off("out of memory during a request on the static path (CUDA graphs): the graphs "
                                 "are freed and it runs on the eager path from now on. Lower graphMemory, or set "
                                 "compile off.")
                out = self._complete_batch(requests, cancel)
        except torch.OutOfMemoryError:
            self._free()
            raise OutOfMemory(
                f"out of memory on {self._device()} completing {len(requests)} request(s), on the eager path too. "
                f"Fix: lower maxPrefixTokens / maxSuffixTokens or dllmLengths, use dtype bfloat16, run one "
                f"model (models qwen|dllm), set compile off / a lower graphMemory, or device cpu") from None
        finally:
            self._drop_dead_graphs()
        news = [reason for role, reason in self.fallbacks.items() if before.get(role) != reason]
        for comp in out:  # what went wrong on the way is said with the answer it still got
            comp.notes.extend(news)
        return out

    def prefill_idle(self, request: FimRequest) -> dict[str, int] | None:
        """Qwen's prompt pass alone over `request`'s prompt, keeping what its cache already holds: for
        while the user is idle (llama.vim prefills its ring of chunks with `n_predict: 0`). New chunks are
        appended to the project context, so the next completion's prompt begins with this one's context
        and its pass runs over the local window only. Call it on the thread that runs requests, between
        them (it rewrites the cache's row). Returns Qwen's prompt tokens {"computed", "reused"}, or None
        where it has nothing to do: no Qwen loaded, or prefixReuse off (the next pass runs the whole
        prompt anyway)."""
        if not self.loaded:
            self.load()
        if self.qwen is None or not self.config.prefix_reuse:
            return None
        ids = self._qwen_prompt(request).ids
        # the room a completion of this request decodes into: the cache it will find is this one
        reserve = request.max_new_tokens or self.config.max_new_tokens
        try:
            state = self.qwen.prefill([ids], keep=True, reserve=reserve)
        except torch.OutOfMemoryError:
            self._free()
            raise OutOfMemory(f"out of memory on {self._device()} prefilling a {len(ids)}-token prompt while "
                              f"idle. Fix: lower contextTotalTokens or maxPrefixTokens, or use dtype bfloat16") from None
        finally:
            self._drop_dead_graphs()
        return {"computed": state.computed, "reused": state.reused}

    def _static_off(self, reason: str) -> None:
        for role, runner in (("qwen", self.qwen), ("dllm", self.diffusion)):
            if runner is not None:
                runner.fall_back(f"{role}: {reason}")
        self._drop_dead_graphs()
        self._free()

    def _drop_dead_graphs(self) -> None:
        """Free the graphs of runners that fell back. Done here, on the thread that runs requests, once
        no side job runs: a runner that falls back on the side thread never frees graphs in use."""
        for runner in self.runners:
            if not runner.static and any(len(g) for g in runner.graph_sets):
                runner.drop_graphs()

    def _free(self) -> None:
        gc.collect()
        if self._device().type == "cuda":
            torch.cuda.empty_cache()  # so the retry, or the next request, can run

    def _prompts(self, requests: list[FimRequest], cfg: EngineConfig | None = None) -> Prompts:
        """The one place the models' prompt ids are built from the requests (prompt.py: the local window
        within the request's budget, and its project context). A request with neither gets the plain
        FIM prompt of its whole prefix and suffix, as the eval needs."""
        cfg = cfg or self.config
        qwen = [self._qwen_prompt(r) for r in requests] if self.ar is not None else None
        scorer = None
        if self.scorer is not None:
            if self.scorer is self.ar:
                scorer = [p.ids for p in qwen]
            else:
                segment = self._segments(self.scorer.tokenizer)
                scorer = [qwen_prompt(self.scorer.tokenizer, r.prefix, r.suffix, r.context, r.budget, segment).ids
                          for r in requests]
        dllm = None
        if self.dllm is not None:
            tok = self.dllm.tokenizer
            segment = self._segments(tok)
            dllm = [dllm_prompt(tok, r.prefix, r.suffix, r.context, r.budget, self._hole_cap(r, cfg), segment)
                    for r in requests]
        return Prompts(qwen, scorer, dllm)

    def _qwen_prompt(self, request: FimRequest) -> QwenPrompt:
        tok = self.ar.tokenizer
        return qwen_prompt(tok, request.prefix, request.suffix, request.context, request.budget, self._segments(tok))

    def _segments(self, tokenizer: Any) -> SegmentCache:
        """The context segments' ids from earlier prompts, one cache per tokenizer: a chunk that stays
        from keystroke to keystroke is tokenized once."""
        key = id(tokenizer)
        if key not in self._segment_caches:
            self._segment_caches[key] = SegmentCache(tokenizer)
        return self._segment_caches[key]

    @staticmethod
    def _hole_cap(request: FimRequest, cfg: EngineConfig) -> int:
        """The longest hole the diffusion model tries for the request (its prompt leaves room for it)."""
        fixed = request.dllm_length or cfg.dllm_length
        if fixed:
            return fixed
        return max(cfg.dllm_lengths_single_line if request.single_line else cfg.dllm_lengths)

    def _complete_batch(self, requests: list[FimRequest], cancel: CancelCheck | None,
                        keep: bool = True) -> list[Completion]:
        device = self._device()
        cfg = effective(self.config, device.type)
        start = time.perf_counter()
        prompts = self._prompts(requests, cfg)
        reuse = cfg.score_reuse and cfg.score_mode == "fim" and self.qwen is not None and self.scorer is self.ar
        gens: list[list[Generation]] = [[] for _ in requests]
        known: dict[tuple[int, int], Score] = {}  # (request, candidate) scored by the diffusion stage
        timings: dict[str, float] = {}
        prompt_state = None
        # Eager, the stages take turns, also on a GPU: two Python threads launching kernels through one
        # interpreter measured 2.8x slower than turns. Replayed graphs leave the interpreter free, so on
        # the static path the diffusion stage runs beside Qwen (overlap.py, eval/BENCHMARKS.md).
        side: SideJob | None = None
        handoff = PromptHandoff()
        if self.diffusion is not None and self.diffusion.static and self.qwen is not None and (
                cfg.overlap == "on" or (cfg.overlap == "auto" and device.type == "cuda")):
            side = self._side_stage().submit(
                lambda stop: self._dllm_stage(requests, prompts, cfg, stop, handoff if reuse else None), cancel)
        try:
            if self.qwen is not None:
                try:
                    qwen, prompt_state = self._run_qwen(requests, prompts.qwen, cfg, cancel,
                                                        handoff.put if side is not None else None,
                                                        keep and cfg.prefix_reuse)
                finally:
                    handoff.close()
                for g, out in zip(gens, qwen):
                    g.append(out)
                timings["qwen"] = time.perf_counter() - start
                timings["qwen_prefill"] = qwen[0].prefill_seconds or 0.0
            if self.diffusion is not None:
                if side is not None:
                    (outs, side_scores, side_score_seconds), timings["dllm"] = side.result()
                    if side_score_seconds is not None:
                        timings["dllm_score"] = side_score_seconds
                else:
                    t = time.perf_counter()
                    outs, side_scores = self._run_dllm(requests, prompts.dllm, cfg, cancel), None
                    timings["dllm"] = time.perf_counter() - t
                for k, (i, out) in enumerate(outs):
                    gens[i].append(out)
                    if side_scores is not None:
                        known[(i, len(gens[i]) - 1)] = side_scores[k]
        finally:
            if side is not None:
                side.finish()  # cancelled or failed: the side job has stopped before anything else runs
        if cancel is not None and cancel():
            raise Cancelled()
        t = time.perf_counter()
        scores = self._score(requests, prompts, gens, cfg, prompt_state if reuse else None, known)
        timings["score"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - start
        per_request = {k: v / len(requests) for k, v in timings.items()}
        out = [self._select(g, s, per_request) for g, s in zip(gens, scores)]
        for i, comp in enumerate(out):
            comp.qwen_prompt = prompts.qwen_prompts[i] if prompts.qwen_prompts is not None else None
            comp.dllm_prompt = prompts.dllm_prompts[i] if prompts.dllm_prompts is not None else None
            if prompt_state is not None:
                comp.prompt_tokens = {"computed": prompt_state.computed // len(requests),
                                      "reused": prompt_state.reused // len(requests)}
        return out

    def _device(self) -> torch.device:
        return (self.ar or self.dllm).device

    def _side_stage(self) -> SideStage:
        if self._side is None:
            self._side = SideStage()
        return self._side

    def _dllm_stage(self, requests: list[FimRequest], prompts: Prompts, cfg: EngineConfig, stop: CancelCheck,
                    handoff: PromptHandoff | None):
        """The diffusion candidates and, once Qwen's prompt is cached, their scores on it (the same
        math as the scoring stage's), so scoring after Qwen's last token is left with Qwen's own."""
        with self.diffusion.on_stream():
            outs = self._run_dllm(requests, prompts.dllm, cfg, stop)
            prompt = handoff.get() if handoff is not None else None
            if prompt is None or stop():
                return outs, None, None
            start = time.perf_counter()
            scores = self.qwen.score(prompt, [(i, out.text) for i, out in outs])
            return outs, scores, time.perf_counter() - start

    def _run_qwen(self, requests: list[FimRequest], prompts: list[list[int]], cfg: EngineConfig,
                  cancel: CancelCheck | None, on_prompt: Callable[[PromptState], None] | None, keep: bool):
        params = ArParams(cfg.temperature, cfg.top_p, cfg.top_k, cfg.max_new_tokens)
        # the single-line tables cost ~0.5 s to build: kept across requests
        limits = RowLimits([r.max_new_tokens or cfg.max_new_tokens for r in requests],
                           [r.single_line for r in requests], self._line_stop)
        try:
            return self.qwen.generate(prompts, params, self._generator(self.ar, 0), cancel, limits, on_prompt, keep)
        finally:
            self._line_stop = limits.line_stop

    def _run_dllm(self, requests: list[FimRequest], ids: list[tuple[list[int], list[int]]], cfg: EngineConfig,
                  cancel: CancelCheck | None) -> list[tuple[int, Generation]]:
        jobs, params = dllm_jobs(requests, ids, cfg)
        outs = self.diffusion.infill([job for _, job in jobs], params, self._generator(self.dllm, 1), cancel)
        return [(i, out) for (i, _), out in zip(jobs, outs)]

    def _generator(self, lm: LoadedModel, offset: int) -> torch.Generator | None:
        # One generator per model, so a model's output does not depend on whether the other ran.
        if self.config.seed is None:
            return None
        return torch.Generator(device=lm.device).manual_seed(self.config.seed + offset)

    def _score(self, requests: list[FimRequest], prompts: Prompts, gens: list[list[Generation]],
               cfg: EngineConfig, prompt: PromptState | None,
               known: dict[tuple[int, int], Score]) -> list[list[Score | None]]:
        if self.scorer is None:
            return [[None] * len(g) for g in gens]
        if prompt is None:  # the full pass, on the same prompt ids the generators got
            flat = [ScoreItem(r.prefix, r.suffix, g.text, ids)
                    for r, ids, gs in zip(requests, prompts.scorer, gens) for g in gs]
            scores = iter(score_batch(self.scorer, flat, cfg.score_mode))
            return [[next(scores) for _ in gs] for gs in gens]
        # On Qwen's cached prompt: its own middle is already scored by its generation log-probs
        # when those tokens are what the scorer would encode; the rest cost a pass over their tokens.
        # Log-probs from an int8 decode step are near the exact ones, not equal: they may stand for a
        # lone candidate (nothing to be compared with), never for one another candidate is ranked against.
        out: list[list[Score | None]] = [[None] * len(gs) for gs in gens]
        todo, ends = [], []  # ends: Qwen's own middles that lack only the end token's log-prob
        for i, gs in enumerate(gens):
            for j, g in enumerate(gs):
                if (i, j) in known:
                    out[i][j] = known[(i, j)]
                    continue
                own = (g.model == "qwen" and encode(self.scorer.tokenizer, g.text) == g.token_ids
                       and (len(gs) == 1 or not self.qwen.int8_decode))
                if own and g.end_logprob is not None:
                    out[i][j] = score_from_logprobs([*g.logprobs, g.end_logprob])
                elif own:  # cut by its budget or a newline: log P(end) is one step past its last token
                    ends.append((i, j))
                else:
                    todo.append((i, j, g.text))
        if ends and not todo:
            # nothing else needs a pass (Qwen alone, or the diffusion stage scored its own): the end
            # token's log-prob from one decode step on the cache the generation left, instead of a
            # scoring pass over the middle's tokens
            end_lps = self.qwen.end_logprobs(prompt, [(i, gens[i][j].token_ids) for i, j in ends],
                                             ArParams(cfg.temperature, cfg.top_p, cfg.top_k))
            for (i, j), end_lp in zip(ends, end_lps):
                out[i][j] = score_from_logprobs([*gens[i][j].logprobs, end_lp])
        else:
            todo += [(i, j, gens[i][j].text) for i, j in ends]  # they ride in the pass the others need
        with self.qwen.on_stream():
            scored = self.qwen.score(prompt, [(i, t) for i, _, t in todo])
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
