"""The selfcheck's checks. Each returns a Result (or raises Skip); none measures speed.

Engines compared (fp32, temperature 0, so any two paths must write the same tokens):
- graphs: compile on, overlap on (the GPU default): every pass replayed as a CUDA graph, the diffusion
  stage beside Qwen on its own stream, scoring its candidates on Qwen's cached prompt;
- turns: the same engine with overlap off;
- eager: compile off, the independent path (Qwen: the runner's own functions, uncaptured; diffusion:
  transformers' forward, sampled on the host), itself checked against transformers' generate and a full
  scoring pass (reference.py)."""
from __future__ import annotations

import dataclasses
import gc
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from fim_lsp.engine.ar_fim import stop_ids
from fim_lsp.engine.config import EngineConfig
from fim_lsp.engine.ensemble import WARMUP_TOKENS, Engine, dllm_jobs
from fim_lsp.engine.loading import encode
from fim_lsp.engine.requests import FimRequest
from fim_lsp.engine.results import Cancelled, Completion
from fim_lsp.engine.scorer import ScoreItem, score_batch

from .reference import transformers_greedy

RTOL = 1e-4  # perplexities of two fp32 paths: the same math, summed in another order
CONF_ATOL = 1e-5  # probabilities of two fp32 passes (the DualCache tests hold logits to 1e-5)
MB = 2**20


class Skip(Exception):
    """The check cannot run here (it needs CUDA, or a second GPU)."""


@dataclass
class Result:
    ok: bool
    detail: str


@dataclass
class Context:
    """What the checks share: the base config, the requests, and the engines built so far."""

    config: EngineConfig  # compile on, overlap on, fp32, temperature 0
    device: torch.device
    sizes: tuple[int, ...]  # context tokens of the equality checks
    log: Callable[[str], None]
    engines: dict[str, Engine] = field(default_factory=dict)
    requests: dict[int, list[FimRequest]] = field(default_factory=dict)
    weight_bytes: int = 0  # the models' parameters, counted at the first load
    loaded_graphs: dict[str, int] = field(default_factory=dict)  # graphs each engine had once loaded

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def engine(self, name: str, **changes: Any) -> Engine:
        if name not in self.engines:
            t = time.perf_counter()
            engine = Engine(self.config.replace(**changes), notify=lambda m: self.log(f"  engine says: {m}"))
            engine.load()
            self.log(f"  loaded the {name} engine in {time.perf_counter() - t:.1f} s")
            self.engines[name] = engine
            self.loaded_graphs[name] = engine.graph_stats()["count"]
            models = {id(m.model): m.model for m in (engine.ar, engine.dllm, engine.scorer) if m is not None}
            self.weight_bytes = sum(p.numel() * p.element_size() for m in models.values() for p in m.parameters())
        return self.engines[name]

    def drop(self, *names: str) -> None:
        for name in names or list(self.engines):
            engine = self.engines.pop(name, None)
            if engine is not None:
                engine._teardown()
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def batch(self, tokens: int) -> list[FimRequest]:
        """Two requests of about `tokens` context tokens cut from this package's own source: the cursor
        mid-line (single-line mode, as the server asks) and at a line's end (multi-line)."""
        if tokens not in self.requests:
            tok = self.engine("graphs").tokenizer
            text = "".join(p.read_text() for p in sorted(Path(__file__).resolve().parents[1].glob("engine/*.py")))
            ids = encode(tok, text)
            while len(ids) < tokens + 64:
                ids = ids + ids
            cut = tokens * 3 // 4
            prefix, suffix = tok.decode(ids[:cut]), tok.decode(ids[cut:tokens])
            line_end = prefix.rfind("\n") + 1
            self.requests[tokens] = [FimRequest(prefix, suffix, single_line=True),
                                     FimRequest(prefix[:line_end], prefix[line_end:] + suffix)]
        return self.requests[tokens]


def same(a: list[Completion], b: list[Completion]) -> str | None:
    """None when both answers hold the same candidates with the same perplexities, else what differs."""
    for i, (x, y) in enumerate(zip(a, b)):
        tx = [(c.model, c.hole_length, c.text) for c in x.candidates]
        ty = [(c.model, c.hole_length, c.text) for c in y.candidates]
        if tx != ty:
            return f"request {i}: texts differ: {tx} vs {ty}"
        for c, d in zip(x.candidates, y.candidates):
            if abs(c.perplexity - d.perplexity) > RTOL * abs(d.perplexity):
                return f"request {i}: {c.model} L={c.hole_length} perplexity {c.perplexity!r} vs {d.perplexity!r}"
    return None


def graphs_line(engine: Engine) -> str:
    g = engine.graph_stats()
    mem = ""
    if engine.runners and engine.runners[0].cuda:
        dev = engine.runners[0].device
        mem = (f", device memory allocated {torch.cuda.memory_allocated(dev) / MB:.0f} MB, reserved "
               f"{torch.cuda.memory_reserved(dev) / MB:.0f} MB")
    budget = f" of {g['budgetBytes'] / MB:.0f} MB" if g["budgetBytes"] else ""
    return (f"{g['count']} graphs, {g['bytes'] / MB:.0f} MB{budget}, {g['uncaptured']} passes left uncaptured, "
            f"{g['evicted']} evicted{mem}")


def check_load(ctx: Context) -> Result:
    """The static path comes up whole: every model on it, no fallback, no empty graph."""
    engine = ctx.engine("graphs")
    stats = engine.graph_stats()
    problems = []
    if not engine.loaded:
        problems.append("not loaded")
    if stats["fallbacks"]:
        problems.append(f"fell back: {stats['fallbacks']}")
    if not all(stats["static"].values()):
        problems.append(f"static path off: {stats['static']}")
    if ctx.cuda and stats["count"] == 0:
        problems.append("no graph captured")
    return Result(not problems, "; ".join(problems) or graphs_line(engine))


def check_no_empty_graph(ctx: Context) -> Result:
    if not ctx.cuda:
        raise Skip("CUDA only (a CPU captures nothing)")
    # a capture that recorded nothing raises CaptureError, which turns the model's static path off
    stats = ctx.engine("graphs").graph_stats()
    empty = {k: v for k, v in stats["fallbacks"].items() if "no work" in v}
    return Result(not empty, f"empty captures: {empty}" if empty else f"{stats['count']} graphs, none empty")


def check_equal(ctx: Context, tokens: int) -> Result:
    """graphs + overlap, graphs in turns, eager: the same texts and scores; the side stage's scores equal
    the full-pass scorer's; the eager Qwen equals transformers' generate."""
    reqs = ctx.batch(tokens)
    graphs, eager = ctx.engine("graphs"), ctx.engine("eager", compile="off")
    overlapped = graphs.complete_batch(reqs)
    side = all("dllm_score" in c.timings for c in overlapped)
    graphs.reconfigure(graphs.config.replace(overlap="off"))
    try:
        turns = graphs.complete_batch(reqs)
    finally:
        graphs.reconfigure(graphs.config.replace(overlap="on"))
    plain = eager.complete_batch(reqs)
    for name, answer in (("graphs+overlap", overlapped), ("graphs in turns", turns)):
        diff = same(answer, plain)
        if diff:
            return Result(False, f"{name} vs eager: {diff}")
    prompts = graphs._prompts(reqs).qwen
    items = [ScoreItem(r.prefix, r.suffix, c.text, p) for r, p, comp in zip(reqs, prompts, overlapped)
             for c in comp.candidates]
    full = score_batch(graphs.scorer, items, "fim")
    got = [c.perplexity for comp in overlapped for c in comp.candidates]
    for g, w, item in zip(got, full, items):
        if abs(g - w.perplexity) > RTOL * w.perplexity:
            return Result(False, f"score of {item.completion!r}: {g!r} on the cached prompt, {w.perplexity!r} full pass")
    budget = eager.config.max_new_tokens
    for r, p, comp in zip(reqs, prompts, plain):
        qwen = next(c for c in comp.candidates if c.model == "qwen")
        ref = transformers_greedy(eager.ar, p, budget, stop_ids(eager.ar.tokenizer))
        want = eager.ar.tokenizer.decode(ref.tokens, skip_special_tokens=True)
        if not want.startswith(qwen.text):
            return Result(False, f"eager Qwen wrote {qwen.text!r}, transformers' generate {want!r}")
    if not side and graphs.qwen is not None and graphs.diffusion is not None:
        return Result(False, "the overlapped run did not score its diffusion candidates beside Qwen")
    return Result(True, f"{len(reqs)} requests x 3 paths, {len(items)} candidates, scores within {RTOL:g}")


def check_dual_cache(ctx: Context) -> Result:
    """The graphed DualCache against the eager (transformers) DualCache."""
    reqs = ctx.batch(ctx.sizes[0])
    graphs, eager = ctx.engine("graphs"), ctx.engine("eager", compile="off")
    try:
        for engine in (graphs, eager):
            engine.reconfigure(engine.config.replace(dllm_cache_refresh=8))
        diff = same(graphs.complete_batch(reqs), eager.complete_batch(reqs))
        keys = {k[0][0] for k in graphs.diffusion.graphs.keys()} if graphs.diffusion else set()
        gap = paths_gap(graphs, reqs) if diff and graphs.diffusion is not None else None
    finally:
        for engine in (graphs, eager):
            engine.reconfigure(engine.config.replace(dllm_cache_refresh=0))
    if graphs.diffusion is not None and not {"dual_full", "dual_block"} <= keys:
        return Result(False, f"no DualCache graphs ({sorted(keys)})")
    if not diff:
        return Result(True, "same texts and scores; refresh and block passes replayed")
    if gap is None or gap.token_mismatches or gap.max_conf_diff > CONF_ATOL:
        return Result(False, f"{diff}; along the eager run: {gap}")
    # The two runs parted at a near-tie (a random model's positions can hold confidences 1e-9 apart,
    # below the two paths' rounding); fed the same inputs at every step, the passes agree.
    return Result(True, f"the texts part at a near-tie ({diff}); fed the eager run's inputs at each of "
                        f"{gap.calls} steps, the graphed passes propose the same tokens and confidences within "
                        f"{gap.max_conf_diff:.2g}")


def paths_gap(engine: Engine, reqs: list[FimRequest]) -> Any:
    """The diffusion runner's two paths compared step by step on the engine's own hole rows."""
    jobs, params = dllm_jobs(reqs, engine._prompts(reqs).dllm, engine.config)
    return engine.diffusion.compare_paths([row for _, row in jobs], params)


def check_reloads(ctx: Context) -> Result:
    """Three loads in a row: the same graphs each time, no memory left behind, the same answers."""
    engine = ctx.engine("graphs")
    reqs = ctx.batch(ctx.sizes[0])
    first = engine.complete_batch(reqs)
    counts, memory = [ctx.loaded_graphs["graphs"]], []
    for _ in range(2):
        engine.load()
        counts.append(engine.graph_stats()["count"])
        if ctx.cuda:
            memory.append(torch.cuda.memory_allocated(ctx.device))
        diff = same(engine.complete_batch(reqs), first)
        if diff:
            return Result(False, f"after a reload: {diff}")
    if len(set(counts)) != 1:
        return Result(False, f"graph counts once loaded, each time: {counts}")
    if memory and memory[1] > memory[0] * 1.02 + 64 * MB:
        return Result(False, f"memory after the 2nd and 3rd loads: {memory[0] / MB:.0f} MB, {memory[1] / MB:.0f} MB")
    return Result(True, f"{counts[0]} graphs each time" + (f", {memory[-1] / MB:.0f} MB allocated" if memory else ""))


def check_new_shapes(ctx: Context) -> Result:
    """A context longer than any warm-up size: both stages meet their shapes at request time, at once
    (overlap on), and capture them one after another; the answers equal the eager path's."""
    warmed = max(WARMUP_TOKENS[ctx.device.type])
    reqs = ctx.batch(warmed + 200)
    graphs, eager = ctx.engine("graphs"), ctx.engine("eager", compile="off")
    before = graphs.graph_stats()["count"]
    diff = same(graphs.complete_batch(reqs), eager.complete_batch(reqs))
    stats = graphs.graph_stats()
    if diff:
        return Result(False, diff)
    if stats["fallbacks"]:
        return Result(False, f"fell back: {stats['fallbacks']}")
    return Result(True, f"{warmed + 200}-token contexts: {stats['count'] - before} graphs added, answers equal")


def check_cancel(ctx: Context) -> Result:
    """A request cancelled while Qwen decodes, then the next request at once: it equals a clean run."""
    graphs = ctx.engine("graphs")
    reqs = ctx.batch(ctx.sizes[0])
    main = threading.current_thread()
    polls = {"n": 0}

    def cancel() -> bool:  # Qwen's second decode step; the side stage never hears it
        if threading.current_thread() is main:
            polls["n"] += 1
        return polls["n"] >= 2

    try:
        graphs.complete_batch(reqs, cancel)
    except Cancelled:
        pass
    else:
        raise Skip("Qwen stopped before its second step: nothing to cancel")
    after = graphs.complete_batch(reqs)
    diff = same(after, ctx.engine("eager", compile="off").complete_batch(reqs))
    return Result(diff is None, diff or "cancelled at Qwen's 2nd step; the next request equals a clean run")


def check_memory_cap(ctx: Context) -> Result:
    """Capped at about the weights + 1 GB: the static path falls back with a message, and requests are
    served (on the eager path) within the cap."""
    if not ctx.cuda:
        raise Skip("CUDA only")
    reqs = ctx.batch(ctx.sizes[0])
    ctx.drop()
    dev = ctx.device
    total = torch.cuda.get_device_properties(dev).total_memory
    fraction = min(1.0, (torch.cuda.memory_allocated(dev) + ctx.weight_bytes + 1024 * MB) / total)
    torch.cuda.set_per_process_memory_fraction(fraction, dev)
    said: list[str] = []
    try:
        engine = Engine(ctx.config, notify=said.append)
        engine.load()
        fell = engine.graph_stats()["fallbacks"]
        answers = engine.complete_batch(reqs)
        engine._teardown()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, dev)
        gc.collect()
        torch.cuda.empty_cache()
    if not fell or not any("out of memory" in m for m in said):
        return Result(False, f"capped at {fraction * total / MB:.0f} MB: no fallback message ({said})")
    if not all(comp.candidates for comp in answers):
        return Result(False, "a request was not served under the cap")
    return Result(True, f"capped at {fraction * total / MB:.0f} MB: fell back ({'; '.join(fell.values())}), "
                        f"then served")


def check_second_gpu(ctx: Context) -> Result:
    """The static path on cuda:1: graphs, streams and events on that device, while the current device
    stays 0; its answers equal the eager path's on the same device."""
    if not ctx.cuda:
        raise Skip("CUDA only")
    if torch.cuda.device_count() < 2:
        raise Skip(f"one GPU here ({torch.cuda.get_device_name(0)})")
    reqs = ctx.batch(ctx.sizes[0])
    ctx.drop()
    other = dataclasses.replace(ctx.config, device="cuda:1")
    current = torch.cuda.current_device()
    graphs, eager = Engine(other), Engine(other.replace(compile="off"))
    graphs.load()
    eager.load()
    try:
        stats = graphs.graph_stats()
        diff = same(graphs.complete_batch(reqs), eager.complete_batch(reqs))
    finally:
        graphs._teardown()
        eager._teardown()
    if stats["fallbacks"] or stats["count"] == 0:
        return Result(False, f"cuda:1: {stats['count']} graphs, fallbacks {stats['fallbacks']}")
    if torch.cuda.current_device() != current:
        return Result(False, f"the current device moved from {current} to {torch.cuda.current_device()}")
    return Result(diff is None, diff or f"cuda:1: {stats['count']} graphs, answers equal the eager path's")
