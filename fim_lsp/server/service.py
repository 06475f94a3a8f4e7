"""One completion request, end to end: context -> cache -> (debounce, wait for models) -> worker ->
post-process -> items. The feature handlers are thin wrappers over `complete`.

The service gets the narrow things it uses (engine, cache, stats, worker and two callbacks), never the
server: server -> service -> engine, no arrow back."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from ..engine.ensemble import Engine
from ..engine.prompt import clip_text
from ..engine.requests import FimRequest, ProjectContext, PromptBudget
from ..engine.results import CancelCheck, Candidate, Cancelled, Completion
from .cache import CompletionCache
from .context import FimContext, extract, split_lines, single_line_mode, window_chars
from .postprocess import Insert, postprocess
from .settings import ServerSettings
from .stats import Stats
from .worker import CANCELLED, SUPERSEDED, Job, ModelWorker

log = logging.getLogger("fim_lsp.server")
MAX_DOCUMENT_CHARS = 20_000_000  # beyond this the editor is not sending code; skip rather than stall
WaitReady = Callable[[float], Awaitable[bool]]  # seconds -> did a load attempt finish in time
OnServed = Callable[[float, bool], None]  # (latency ms, from cache), after every answer that ran this far
# (uri, document text, cursor line, settings) -> the request's project context and prompt budget
ContextFor = Callable[[str, str, int, ServerSettings], Awaitable[tuple[ProjectContext | None, PromptBudget]]]


@dataclass
class Document:
    text: str
    encoding: str  # the negotiated position encoding


@dataclass
class Offer:
    """What one request answered with, kept as `last` for hover and fimLsp.showCandidates."""

    uri: str
    line: int  # client position of the request
    character: int
    ctx: FimContext
    completion: Completion
    inserts: list[tuple[Candidate, Insert]]  # distinct usable candidates, winner first
    from_cache: bool
    latency_ms: float
    extra_notes: list[str] = field(default_factory=list)

    @property
    def winner(self) -> Candidate | None:
        return self.completion.winner


def distinct_inserts(completion: Completion, ctx: FimContext, single_line: bool) -> list[tuple[Candidate, Insert]]:
    ordered = sorted(completion.candidates, key=lambda c: c is not completion.winner)  # stable: winner first
    seen: set[tuple[str, int]] = set()
    out: list[tuple[Candidate, Insert]] = []
    for cand in ordered:
        ins = postprocess(cand.text, ctx, single_line)
        if ins is None or (ins.text, ins.cover) in seen:
            continue
        seen.add((ins.text, ins.cover))
        out.append((cand, ins))
    return out


class CompletionService:
    def __init__(self, engine: Engine, cache: CompletionCache, stats: Stats, worker: ModelWorker,
                 wait_ready: WaitReady, on_served: OnServed, context_for: ContextFor | None = None) -> None:
        self.engine, self.cache, self.stats, self.worker = engine, cache, stats, worker
        self.wait_ready, self.on_served, self.context_for = wait_ready, on_served, context_for
        self.last: Offer | None = None  # for hover and fimLsp.showCandidates
        # Latest-wins across documents: the newest request, and the context it asked for (a request
        # for the same context, VS Code's inline + regular pair, is not superseded by it).
        self._seq = 0
        self._latest: tuple[str, str, str] | None = None
        # Jobs in flight by context: a second request for the same context (VS Code asks for inline
        # and regular completions at once) joins the running job instead of superseding it.
        self._inflight: dict[tuple[str, str], Job] = {}

    def forget(self) -> None:
        """The engine changed: answers made by the old one are neither served nor shown any more."""
        self.cache.clear()
        self.last = None

    def _is_latest(self, seq: int, key: tuple[str, str, str]) -> bool:
        return seq == self._seq or key == self._latest

    async def complete(self, uri: str, line: int, character: int, doc: Document | None,
                       settings: ServerSettings) -> Offer | None:
        """None means "no completion" for any reason; every reason is counted in the stats.
        `doc` is None when the editor never opened `uri`."""
        stats = self.stats
        started = time.perf_counter()
        stats.requests += 1
        self._seq += 1
        seq, self._latest = self._seq, None
        # A line past the end means the editor's text and ours differ: an item there would land elsewhere.
        if (not settings.enabled or doc is None or len(doc.text) > MAX_DOCUMENT_CHARS
                or line >= len(split_lines(doc.text))):
            stats.empty += 1
            return None
        ctx = extract(doc.text, line, character, doc.encoding, settings.prefix_lines, settings.suffix_lines,
                      window_chars(settings.max_prefix_tokens), window_chars(settings.max_suffix_tokens))
        single = single_line_mode(ctx, settings.multiline)
        key = (uri, ctx.prefix, ctx.suffix)
        self._latest = key

        hit = self.cache.get(ctx.prefix, ctx.suffix, uri=uri)
        if hit is not None:
            stats.cache_hits += 1
            stats.typed_through += bool(hit.typed)
            return self._offer(uri, line, character, ctx, hit.completion, single, True, started)

        if settings.debounce_ms > 0:
            await asyncio.sleep(settings.debounce_ms / 1000)
            if not self._is_latest(seq, key):
                stats.debounced += 1
                stats.superseded += 1
                return None
        if not await self.wait_ready(settings.wait_for_models_ms / 1000):
            stats.not_ready += 1
            stats.empty += 1
            return None
        if not self._is_latest(seq, key):
            stats.superseded += 1
            return None
        if not self.engine.available:
            stats.empty += 1
            return None

        context, budget = None, None
        if self.context_for is not None:
            context, budget = await self.context_for(uri, doc.text, ctx.line, settings)
            if not self._is_latest(seq, key):
                stats.superseded += 1
                return None
        job = self._job_for(uri, ctx, settings, single, context, budget)
        job.waiters += 1
        try:
            # shielded: one waiter's $/cancelRequest must not cancel a job that others still await
            completion = await asyncio.shield(job.future)
        except Cancelled:
            if job.reason == SUPERSEDED:
                stats.superseded += 1
            else:
                stats.cancelled += 1
            return None
        except asyncio.CancelledError:
            # $/cancelRequest: pygls cancelled this handler's task. Stop the model loop (unless another
            # request shares it) and answer with an empty result now instead of an error.
            job.waiters -= 1
            if job.waiters == 0:
                job.cancel(CANCELLED)
            stats.cancelled += 1
            return None
        self.cache.put(ctx.prefix, ctx.suffix, completion, uri=uri)
        return self._offer(uri, line, character, ctx, completion, single, False, started)

    def _job_for(self, uri: str, ctx: FimContext, settings: ServerSettings, single: bool,
                 context: ProjectContext | None, budget: PromptBudget | None) -> Job:
        key = (ctx.prefix, ctx.suffix)
        job = self._inflight.get(key)
        if job is not None and not job.cancelled() and not job.future.done():
            self.stats.joined += 1
            return job
        job = self.worker.submit(lambda cancel: self._run_engine(ctx, settings, single, context, budget, cancel),
                                 key=uri, supersede=True)
        self._inflight[key] = job
        job.future.add_done_callback(lambda _f: self._inflight.pop(key, None) if self._inflight.get(key) is job else None)
        return job

    def _run_engine(self, ctx: FimContext, settings: ServerSettings, single: bool, context: ProjectContext | None,
                    budget: PromptBudget | None, cancel: CancelCheck) -> Completion:
        """Worker thread. Token budgets are applied here: tokenizing is model work too."""
        stats, engine = self.stats, self.engine
        tok = engine.tokenizer
        prefix = clip_text(tok, ctx.prefix, settings.max_prefix_tokens, keep_end=True) if tok else ctx.prefix
        suffix = clip_text(tok, ctx.suffix, settings.max_suffix_tokens, keep_end=False) if tok else ctx.suffix
        stats.model_runs += 1
        try:
            # single-line: the engine stops Qwen at the line's end instead of writing lines we cut
            request = FimRequest(prefix, suffix, single_line=single, context=context, budget=budget)
            completion = engine.complete_batch([request], cancel)[0]
        except Cancelled:
            stats.interrupted_loops += 1
            raise
        stats.completed_loops += 1
        return completion

    def _offer(self, uri: str, line: int, character: int, ctx: FimContext, completion: Completion,
               single: bool, from_cache: bool, started: float) -> Offer | None:
        stats = self.stats
        latency = (time.perf_counter() - started) * 1000
        inserts = distinct_inserts(completion, ctx, single)
        offer = Offer(uri, line, character, ctx, completion, inserts, from_cache, latency)
        self.last = offer
        log.debug("%s:%d:%d %s in %.0f ms, winner %s, %d item(s)", uri, line, character,
                  "cache" if from_cache else "models", latency,
                  completion.winner.model if completion.winner else "-", len(inserts))
        self.on_served(latency, from_cache)
        if not inserts:
            stats.empty += 1
            return None
        stats.served += 1
        stats.latencies_ms.append(latency)
        if not from_cache and completion.winner is not None:
            stats.wins[completion.winner.model] += 1
        return offer


def accepted_args(offer: Offer, cand: Candidate) -> dict[str, Any]:
    return {"model": cand.model, "uri": offer.uri, "line": offer.line, "character": offer.character,
            "winner": offer.winner.model if offer.winner else None, "fromCache": offer.from_cache}
