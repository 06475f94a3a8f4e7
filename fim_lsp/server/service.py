"""One completion request, end to end: context -> cache -> (debounce, wait for models) -> worker ->
post-process -> items. The feature handlers in server.py are thin wrappers over `complete`."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..engine.results import CancelCheck, Candidate, Cancelled, Completion
from .context import FimContext, clip_tokens, extract, single_line_mode
from .postprocess import Insert, postprocess
from .worker import CANCELLED, SUPERSEDED, Job

if TYPE_CHECKING:
    from .server import FimLanguageServer

log = logging.getLogger("fim_lsp.server")
MAX_DOCUMENT_CHARS = 20_000_000  # beyond this the editor is not sending code; skip rather than stall


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
    def __init__(self, ls: "FimLanguageServer") -> None:
        self.ls = ls
        self._seq: dict[str, int] = {}
        # Jobs in flight by context: a second request for the same context (VS Code asks for inline
        # and regular completions at once) joins the running job instead of superseding it.
        self._inflight: dict[tuple[str, str], Job] = {}

    def _is_latest(self, uri: str, seq: int) -> bool:
        return self._seq.get(uri) == seq

    async def complete(self, uri: str, line: int, character: int) -> Offer | None:
        """None means "no completion" for any reason; every reason is counted in the stats."""
        ls, stats = self.ls, self.ls.stats
        started = time.perf_counter()
        stats.requests += 1
        seq = self._seq.get(uri, 0) + 1
        self._seq[uri] = seq
        settings = ls.settings
        doc = ls.workspace.text_documents.get(uri)
        if not settings.enabled or doc is None:
            stats.empty += 1
            return None
        text = doc.source
        if len(text) > MAX_DOCUMENT_CHARS:
            stats.empty += 1
            return None
        encoding = str(ls.workspace.position_encoding or "utf-16")
        ctx = extract(text, line, character, encoding, settings.prefix_lines, settings.suffix_lines)
        single = single_line_mode(ctx, settings.multiline)

        hit = ls.cache.get(ctx.prefix, ctx.suffix)
        if hit is not None:
            stats.cache_hits += 1
            stats.typed_through += bool(hit.typed)
            return self._offer(uri, line, character, ctx, hit.completion, single, True, started)

        if settings.debounce_ms > 0:
            await asyncio.sleep(settings.debounce_ms / 1000)
            if not self._is_latest(uri, seq):
                stats.debounced += 1
                stats.superseded += 1
                return None
        if not await ls.loader.wait_ready(settings.wait_for_models_ms / 1000):
            stats.not_ready += 1
            stats.empty += 1
            return None
        if not self._is_latest(uri, seq):
            stats.superseded += 1
            return None
        if not ls.engine.available:
            stats.empty += 1
            return None

        job = self._job_for(uri, ctx, single)
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
        ls.cache.put(ctx.prefix, ctx.suffix, completion)
        return self._offer(uri, line, character, ctx, completion, single, False, started)

    def _job_for(self, uri: str, ctx: FimContext, single: bool) -> Job:
        key = (ctx.prefix, ctx.suffix)
        job = self._inflight.get(key)
        if job is not None and not job.cancelled() and not job.future.done():
            self.ls.stats.joined += 1
            return job
        job = self.ls.worker.submit(lambda cancel: self._run_engine(ctx, single, cancel), key=uri)
        self._inflight[key] = job
        job.future.add_done_callback(lambda _f: self._inflight.pop(key, None) if self._inflight.get(key) is job else None)
        return job

    def _run_engine(self, ctx: FimContext, single: bool, cancel: CancelCheck) -> Completion:
        """Worker thread. Token budgets are applied here: tokenizing is model work too."""
        ls, stats, settings = self.ls, self.ls.stats, self.ls.settings
        tok = ls.engine.tokenizer
        prefix = clip_tokens(tok, ctx.prefix, settings.max_prefix_tokens, keep_end=True) if tok else ctx.prefix
        suffix = clip_tokens(tok, ctx.suffix, settings.max_suffix_tokens, keep_end=False) if tok else ctx.suffix
        stats.model_runs += 1
        try:
            # single-line: the engine stops Qwen at the line's end instead of writing lines we cut
            completion = ls.engine.complete(prefix, suffix, cancel=cancel, single_line=single)
        except Cancelled:
            stats.interrupted_loops += 1
            raise
        stats.completed_loops += 1
        return completion

    def _offer(self, uri: str, line: int, character: int, ctx: FimContext, completion: Completion,
               single: bool, from_cache: bool, started: float) -> Offer | None:
        ls, stats = self.ls, self.ls.stats
        latency = (time.perf_counter() - started) * 1000
        inserts = distinct_inserts(completion, ctx, single)
        offer = Offer(uri, line, character, ctx, completion, inserts, from_cache, latency)
        ls.last = offer
        log.debug("%s:%d:%d %s in %.0f ms, winner %s, %d item(s)", uri, line, character,
                  "cache" if from_cache else "models", latency,
                  completion.winner.model if completion.winner else "-", len(inserts))
        ls.loader.send_status("ready", "served" + (" from cache" if from_cache else ""), latency)
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
