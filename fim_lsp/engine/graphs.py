"""Replaying static-shape model passes: one CUDA graph per input shape on a GPU, torch.compile on CPU,
within a memory budget.

A 0.5B model's pass on a GPU is launch-bound: the ~500 kernels of one eager forward cost more in Python
and launch latency than in arithmetic. A graph captured once per shape replays them with one launch.
Capture runs the function twice on the runner's capture stream to settle lazy initialisation, then
records it; that costs about three passes, so shapes are captured at load (warm-up) and, within the
budget, when first met.

What can go wrong, and what this module does about it:
- PyTorch allows one capture at a time per process (pytorch#137844): every capture takes `CAPTURE_LOCK`.
- A capture on the wrong device or stream records nothing ("The CUDA Graph is empty" is only a
  warning): the warning is turned into a `CaptureError`, as is any exception the capture raises; an
  out-of-memory error stays `torch.OutOfMemoryError`. The runner that owns the set decides what follows.
- Memory: each graph's cost is the device memory its capture took (its share of the set's memory pool,
  its static inputs, the graph itself, as the driver reports it). Graphs past the engine's budget are
  evicted least recently used first; a shape that cannot fit even then runs uncaptured."""
from __future__ import annotations

import os
import threading
import types
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable

import torch

Fn = Callable[..., tuple[torch.Tensor, ...]]
# Process-wide on purpose: the limit it guards (one CUDA graph capture at a time) is the process's.
CAPTURE_LOCK = threading.Lock()


class CaptureError(RuntimeError):
    """A CUDA graph capture raised, or recorded no work."""


def bucket(n: int, step: int) -> int:
    """n rounded up to a multiple of step: padded shapes that replay across requests."""
    return -(-n // step) * step


def own_code(fn: Fn) -> Fn:
    """fn with a code object of its own. Dynamo keeps compiled code, and counts recompiles against its
    limit (8), per code object: every key of every runner compiles the same inner function, so without
    a copy a server's ninth batch size or reload fails with "recompile limit exceeded" (fullgraph), and
    the dead runners' compiled steps stay attached to that code. A copy's go away with it."""
    if not isinstance(fn, types.FunctionType):
        return fn
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__,
                              fn.__closure__)


def use_compile_cache() -> Path:
    """Keep inductor's compiled kernels under the user cache dir, so a restart does not recompile."""
    from platformdirs import user_cache_dir

    path = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or Path(user_cache_dir("fim-lsp")) / "inductor")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path


def is_oom(err: BaseException) -> bool:
    """True when err, or an exception it was raised from or during, is an out-of-memory error."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, torch.OutOfMemoryError):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def _synchronize(device: torch.device) -> None:
    """Wait until no graph replay is queued on any stream, before a graph is freed. Never during another
    thread's capture: a device-wide wait would wait on the capturing stream too."""
    with CAPTURE_LOCK:
        torch.cuda.synchronize(device)


def _device_used(device: torch.device) -> int:
    free, total = torch.cuda.mem_get_info(device)
    return total - free


class _Captured:
    def __init__(self, fn: Fn, inputs: list[torch.Tensor], pool: object, stream: torch.cuda.Stream) -> None:
        # The graph holds raw addresses: the function's closure (index tensors, masks) must outlive it.
        self.fn = fn
        self.inputs = [x.clone() for x in inputs]
        caller = torch.cuda.current_stream(stream.device)
        stream.wait_stream(caller)
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn(*self.inputs)
        self.graph = torch.cuda.CUDAGraph()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.cuda.graph(self.graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
                self.outputs = fn(*self.inputs)
        caller.wait_stream(stream)
        empty = [str(w.message) for w in caught if "empty" in str(w.message).lower()]
        if empty:
            raise CaptureError(f"the capture recorded no work ({empty[0]})")
        self.bytes = 0

    def __call__(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        for static, x in zip(self.inputs, inputs):
            static.copy_(x)
        self.graph.replay()
        return self.outputs


@dataclass
class GraphBudget:
    """The device memory an engine's graphs may hold, shared by its runners' graph sets. `limit` None:
    unbounded (CPU, where nothing is captured)."""

    limit: int | None = None
    sets: list["GraphSet"] = field(default_factory=list)

    @property
    def used(self) -> int:
        return sum(s.bytes for s in self.sets)

    @property
    def count(self) -> int:
        return sum(len(s) for s in self.sets)

    def fits(self, extra: int) -> bool:
        return self.limit is None or self.used + extra <= self.limit


class GraphSet:
    """Runs `make()`'s function on `inputs`, keyed by `key` plus the inputs' shapes.

    compile_mode None: on CUDA captured as a graph on the first call for a key (on `stream`, in this
    set's memory pool) and replayed after, the outputs being the graph's own tensors, valid until the
    next call, so read them at once; on CPU called as is. Otherwise torch.compile'd per key in that mode
    (the CPU decode step with compile on; the decode bench compares "reduce-overhead" with plain
    capture). Graphs in one set share a pool, so a set's graphs must never be replayed concurrently:
    a runner keeps one set per stream its graphs replay on, and only the set's own thread evicts."""

    def __init__(self, device: torch.device, name: str, budget: GraphBudget | None = None,
                 stream: torch.cuda.Stream | None = None, compile_mode: str | None = None) -> None:
        self.device = device
        self.name = name
        self.cuda = device.type == "cuda"
        self.compile_mode = compile_mode
        self.budget = budget if budget is not None else GraphBudget()
        self.budget.sets.append(self)
        self.stream = stream
        self._fns: OrderedDict[Hashable, object] = OrderedDict()  # least recently used first
        self._estimates: dict[Hashable, int] = {}  # bytes a capture of each kind took, at most
        self._pool = torch.cuda.graph_pool_handle() if self.cuda and compile_mode is None else None
        # counters kept by the owner thread, read by others (fimLsp.stats) without touching the dict
        self.count = 0
        self.bytes = 0
        self.evicted = 0
        self.uncaptured = 0  # calls that ran uncaptured because no room could be made

    def __len__(self) -> int:
        return self.count

    def keys(self) -> list[Hashable]:
        return list(self._fns)

    def clear(self) -> None:
        if self.cuda and self._fns:
            _synchronize(self.device)
        self._fns.clear()
        self.count = self.bytes = 0

    def _add(self, key: Hashable, fn: object) -> None:
        self._fns[key] = fn
        self.count += 1
        self.bytes += getattr(fn, "bytes", 0)

    def close(self) -> None:
        self.clear()
        if self in self.budget.sets:
            self.budget.sets.remove(self)

    def run(self, key: Hashable, make: Callable[[], Fn], inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        key = (key, *(tuple(x.shape) for x in inputs))
        fn = self._fns.get(key)
        if fn is not None:
            self._fns.move_to_end(key)
            return fn(inputs)  # type: ignore[operator]
        fn = self._build(key, make, inputs)
        if fn is None:  # no room within the budget: this call runs uncaptured, nothing is kept
            self.uncaptured += 1
            return make()(*inputs)
        self._add(key, fn)
        if not self._make_room(0, keep=key):  # alone past the budget: replayed this once, then dropped
            out = fn(inputs)  # type: ignore[operator]
            self._drop(key)
            return out
        return fn(inputs)  # type: ignore[operator]

    def _build(self, key: Hashable, make: Callable[[], Fn], inputs: list[torch.Tensor]) -> Callable | None:
        """What replays `key` from now on: a captured graph (CUDA), a compiled function, or the plain one
        (CPU); None when a graph would not fit the budget even after evicting this set's others."""
        if self.compile_mode is not None:
            compiled = torch.compile(own_code(make()), mode=self.compile_mode, dynamic=False, fullgraph=True)

            def fn(xs: list[torch.Tensor], compiled=compiled) -> tuple[torch.Tensor, ...]:
                if self.cuda:
                    torch.compiler.cudagraph_mark_step_begin()  # the last call's outputs are consumed
                return compiled(*xs)
            return fn
        if not self.cuda:
            plain = make()
            return lambda xs: plain(*xs)
        kind = key[0][0] if isinstance(key[0], tuple) and key[0] else key[0]
        if not self._make_room(self._estimates.get(kind, 0)):
            return None
        captured = self._capture(make, inputs)
        self._estimates[kind] = max(self._estimates.get(kind, 0), captured.bytes)
        return captured

    def _capture(self, make: Callable[[], Fn], inputs: list[torch.Tensor]) -> _Captured:
        assert self.stream is not None, "a CUDA graph set needs its runner's capture stream"
        with CAPTURE_LOCK:
            torch.cuda.empty_cache()  # so what the capture takes shows in the driver's figures
            before = _device_used(self.device)
            try:
                fn = _Captured(make(), inputs, self._pool, self.stream)
            except torch.OutOfMemoryError:
                raise
            except Exception as err:  # noqa: BLE001 - any failure of a capture means: no graphs here
                if is_oom(err):
                    raise torch.OutOfMemoryError(str(err)) from err
                raise CaptureError(f"{self.name}: {type(err).__name__}: {err}") from err
            fn.bytes = max(0, _device_used(self.device) - before)
        return fn

    def _make_room(self, need: int, keep: Hashable | None = None) -> bool:
        """Evict this set's least recently used graphs (never `keep`) until `need` more bytes fit the
        budget; False when they cannot."""
        budget = self.budget
        victims = [k for k in self._fns if k != keep]
        while not budget.fits(need) and victims:
            self._drop(victims.pop(0))
        return budget.fits(need)

    def _drop(self, key: Hashable) -> None:
        if self.cuda:
            _synchronize(self.device)
        victim = self._fns.pop(key)
        self.count -= 1
        self.bytes -= getattr(victim, "bytes", 0)
        self.evicted += 1
