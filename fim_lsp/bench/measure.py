"""Measuring one completion: wall time per stage (the engine's own timings), forward passes and tokens
per stage (hooks on each model's first decoder layer), and peak memory per stage (a sampling thread).

Why hooks on layer 0's input norm rather than the model's forward: every path through the network, whether
the CausalLM forward, the base model, a KV-cached partial pass or the runners' static-shape forward (which
calls each layer's modules, not the layer), runs the first decoder layer's input norm exactly once, and
its input's length is the number of positions that pass computed.

A compiled engine (`Engine.compiled`: captured CUDA graphs) gets no hooks: a hook would force a recompile
and never fires inside a graph replay. Its forward passes are the engine's own counts, positions unknown."""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from fim_lsp.engine.loading import encode

STAGES = ("qwen", "dllm", "score")


@dataclass
class Pass:
    t: float
    role: str  # "ar" (Qwen generation and scoring) or "dllm"
    positions: int  # query positions the pass computed, summed over the batch


@dataclass
class StageSample:
    seconds: float
    forward_passes: int | None  # counted by the hooks; compiled: the engine's count (None for scoring)
    positions: int | None  # query positions run through the network; None when compiled
    out_tokens: int  # tokens the stage produced (generators) or the candidate tokens it scored
    peak_mb: float | None  # peak memory above the pre-call baseline during the stage


@dataclass
class Sample:
    variant: str
    context: int
    repeat: int
    context_tokens: int
    hole_tokens: int
    stages: dict[str, StageSample]
    total_seconds: float
    total_peak_mb: float | None  # peak above the pre-call baseline
    # the process's absolute peak during the call (CPU: RSS high-water mark, so the loaded weights of
    # every engine in the process count; CUDA: torch's max_memory_allocated)
    abs_peak_mb: float | None
    # the engine's own Candidate.forward_passes per model, for cross-checking; several diffusion
    # candidates run as one batch, so the diffusion figure is the batch's (the most any row needed)
    reported_passes: dict[str, int]
    # candidate key -> text, plus "winner"; the key is the model, or "dllm-<length>" when the diffusion
    # model filled several hole lengths
    texts: dict[str, str] = field(default_factory=dict)
    # model -> candidate text re-encoded by that model's tokenizer (Candidate keeps no ids); the
    # agreement with the exact path is counted on these
    token_ids: dict[str, list[int]] = field(default_factory=dict)
    winner: str | None = None
    hooked: bool = True  # forward passes counted by hooks (False: a compiled engine's own counts)
    single_line: bool = False  # the request's single-line flag
    qwen_budget: int | None = None  # the request's max_new_tokens (the server variant's simulated stop)
    qwen_prefill_s: float | None = None  # seconds of Qwen's prompt pass, when the engine reports it
    # seconds the overlapped diffusion stage spent scoring its own candidates (part of its stage's time)
    dllm_score_s: float | None = None
    # Qwen's prompt tokens run through the network and kept from the previous request (prefix reuse)
    prompt_tokens: dict[str, int] = field(default_factory=dict)

    @property
    def qwen_decode_ms_per_token(self) -> float | None:
        """Qwen's time after its prompt pass over the tokens decoded after the first."""
        st = self.stages.get("qwen")
        if st is None or self.qwen_prefill_s is None or st.forward_passes is None or st.forward_passes < 2:
            return None
        return (st.seconds - self.qwen_prefill_s) / (st.forward_passes - 1) * 1000


def first_layer(model: Any) -> torch.nn.Module:
    """The module every forward pass runs once: decoder layer 0's input norm."""
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    layer = layers[0] if layers is not None and len(layers) else next(
        (module for name, module in model.named_modules() if name.endswith("layers.0")), None)
    if layer is None:
        raise ValueError(f"no decoder layer 0 in {type(model).__name__}: cannot count forward passes")
    return getattr(layer, "input_layernorm", layer)


class PassRecorder:
    """Records every forward pass through each distinct model (a shared scorer is hooked once)."""

    def __init__(self, models: dict[str, Any]) -> None:
        self.passes: list[Pass] = []
        self._handles = []
        seen: set[int] = set()
        for role, model in models.items():
            if model is None or id(model) in seen:
                continue
            seen.add(id(model))
            self._handles.append(first_layer(model).register_forward_pre_hook(self._hook(role), with_kwargs=True))

    def _hook(self, role: str):
        def hook(_module: Any, args: tuple, kwargs: dict) -> None:
            h = args[0] if args else kwargs.get("hidden_states")
            n = int(h.shape[0] * h.shape[1]) if h is not None and h.dim() == 3 else 0
            self.passes.append(Pass(time.perf_counter(), role, n))
        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()


class MemorySampler:
    """Polls memory in a thread. CPU: resident set size from /proc (torch allocations bypass
    tracemalloc); CUDA: torch.cuda.memory_allocated. Short spikes between polls can be missed, so
    the whole call's peak also comes from the kernel's high-water mark (CPU) or torch's peak (CUDA)."""

    def __init__(self, device: torch.device, interval: float = 0.002) -> None:
        self.cuda = device.type == "cuda"
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.has_proc = os.path.exists("/proc/self/statm")

    def now(self) -> int | None:
        if self.cuda:
            return int(torch.cuda.memory_allocated())
        if not self.has_proc:
            return None
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self._page

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            try:  # "5" resets the process's peak RSS (VmHWM), Linux >= 4.0
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")
            except OSError:
                pass

    def peak(self) -> int | None:
        if self.cuda:
            return int(torch.cuda.max_memory_allocated())
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            value = self.now()
            if value is not None:
                self.samples.append((time.perf_counter(), value))
            time.sleep(self.interval)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def max_between(self, t0: float, t1: float) -> int | None:
        vals = [v for t, v in self.samples if t0 <= t <= t1]
        return max(vals) if vals else None


def stage_windows(start: float, end: float, timings: dict[str, float]) -> dict[str, tuple[float, float]]:
    """When each stage ran, from the engine's durations. Scoring always comes last. The generators run
    one after the other (qwen, then dllm) when their durations add up to the total; otherwise they ran
    concurrently (GPU) and both windows open at the start."""
    q, d, s = (timings.get(k, 0.0) for k in STAGES)
    score = (end - s, end)
    sequential = q + d + s <= (end - start) * 1.02 + 1e-3
    qwen = (start, start + q)
    dllm = (start + q, start + q + d) if sequential else (start, start + d)
    return {"qwen": qwen, "dllm": dllm, "score": score}


def _mb(value: int | None, base: int | None) -> float | None:
    if value is None or base is None:
        return None
    return max(0, value - base) / 2**20


def _key(c: Any, several: bool) -> str:
    return f"{c.model}-{c.hole_length}" if several and c.model == "dllm" else c.model


def measure(engine: Any, request: Any, variant: str, context: int, repeat: int, context_tokens: int,
            hole_tokens: int) -> Sample:
    """Run one completion through `engine.complete_batch` and measure it."""
    device = next(lm for lm in (engine.ar, engine.dllm) if lm is not None).device
    hooked = not engine.compiled
    recorder = PassRecorder({"ar": getattr(engine.ar, "model", None), "dllm": getattr(engine.dllm, "model", None),
                             "scorer": getattr(engine.scorer, "model", None)} if hooked else {})
    sampler = MemorySampler(device)
    try:
        if device.type == "cuda":
            torch.cuda.synchronize()
        base = sampler.now()
        sampler.reset_peak()
        with sampler:
            start = time.perf_counter()
            comp = engine.complete_batch([request])[0]
            if device.type == "cuda":
                torch.cuda.synchronize()
            end = time.perf_counter()
        total_peak = sampler.peak()
    finally:
        recorder.close()
    windows = stage_windows(start, end, comp.timings)
    reported: dict[str, int] = {}
    tokens: dict[str, int] = {}
    for c in comp.candidates:
        reported[c.model] = max(reported.get(c.model, 0), c.forward_passes)
        tokens[c.model] = tokens.get(c.model, 0) + c.tokens
    stages: dict[str, StageSample] = {}
    for stage in STAGES:
        if stage not in comp.timings:
            continue
        lo, hi = windows[stage]
        if not hooked:
            passes, positions = reported.get(stage), None
        else:
            if stage == "dllm":  # only the diffusion model runs in this stage: no need for the window
                ps = [p for p in recorder.passes if p.role == "dllm"]
            else:
                # Qwen's passes start before its stage ends (start + its duration); scoring's after. The
                # score window, measured back from the call's end, also holds the engine's bookkeeping
                # after scoring, so its start is later than scoring's: not a boundary to count by.
                qwen_end = windows["qwen"][1]
                ps = [p for p in recorder.passes if p.role != "dllm"
                      and (p.t >= qwen_end if stage == "score" else p.t < qwen_end)]
            passes, positions = len(ps), sum(p.positions for p in ps)
        # generators: the tokens they produced; scoring: the candidate tokens it scored (when the diffusion
        # stage scored its own beside Qwen, the others')
        side = "dllm_score" in comp.timings
        out_tokens = tokens[stage] if stage in tokens else sum(
            c.tokens for c in comp.candidates if not (side and c.model == "dllm"))
        stages[stage] = StageSample(seconds=comp.timings[stage], forward_passes=passes, positions=positions,
                                    out_tokens=out_tokens, peak_mb=_mb(sampler.max_between(lo, hi), base))
    several = sum(c.model == "dllm" for c in comp.candidates) > 1
    texts = {_key(c, several): c.text for c in comp.candidates}
    texts["winner"] = comp.text
    tokenizers = {"qwen": getattr(engine.ar, "tokenizer", None), "dllm": getattr(engine.dllm, "tokenizer", None)}
    token_ids = {_key(c, several): encode(tokenizers[c.model], c.text) for c in comp.candidates
                 if tokenizers.get(c.model) is not None}
    return Sample(variant=variant, context=context, repeat=repeat, context_tokens=context_tokens,
                  hole_tokens=hole_tokens, stages=stages, total_seconds=comp.timings.get("total", end - start),
                  total_peak_mb=_mb(total_peak, base), abs_peak_mb=_mb(total_peak, 0), reported_passes=reported,
                  texts=texts, token_ids=token_ids, winner=comp.winner.model if comp.winner else None,
                  hooked=hooked, single_line=request.single_line, qwen_budget=request.max_new_tokens,
                  qwen_prefill_s=comp.timings.get("qwen_prefill"), dllm_score_s=comp.timings.get("dllm_score"),
                  prompt_tokens=dict(comp.prompt_tokens))
