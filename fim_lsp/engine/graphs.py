"""Replaying static-shape model passes: one CUDA graph per input shape on a GPU, torch.compile on CPU.

A 0.5B model's pass on a GPU is launch-bound: the ~500 kernels of one eager forward cost more in Python
and launch latency than in arithmetic. A graph captured once per shape replays them with one launch.
Capture runs the function twice on a side stream to settle lazy initialisation, then records it; that
costs about three passes, so shapes are captured when first seen (and at load, for the common ones)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Hashable

import torch

Fn = Callable[..., tuple[torch.Tensor, ...]]


def bucket(n: int, step: int) -> int:
    """n rounded up to a multiple of step: padded shapes that replay across requests."""
    return -(-n // step) * step


def use_compile_cache() -> Path:
    """Keep inductor's compiled kernels under the user cache dir, so a restart does not recompile."""
    from platformdirs import user_cache_dir

    path = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or Path(user_cache_dir("fim-lsp")) / "inductor")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path


class _Captured:
    def __init__(self, fn: Fn, inputs: list[torch.Tensor], pool: object) -> None:
        # The graph holds raw addresses: the function's closure (index tensors, masks) must outlive it.
        self.fn = fn
        self.inputs = [x.clone() for x in inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            self.outputs = fn(*self.inputs)

    def __call__(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        for static, x in zip(self.inputs, inputs):
            static.copy_(x)
        self.graph.replay()
        return self.outputs


class GraphCache:
    """Runs `make()`'s function on `inputs`, keyed by `key` plus the inputs' shapes.

    compile_mode None: on CUDA captured as a graph on the first call for a key and replayed after, the
    outputs being the graph's own tensors, valid until the next call (the graphs share one memory pool),
    so read them at once; on CPU called as is. Otherwise torch.compile'd per key in that mode (the
    engine's CPU decode step; the decode bench compares "reduce-overhead" with plain capture)."""

    def __init__(self, device: torch.device, compile_mode: str | None = None) -> None:
        self.cuda = device.type == "cuda"
        self.compile_mode = compile_mode
        self._fns: dict[Hashable, object] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.cuda and compile_mode is None else None

    def __len__(self) -> int:
        return len(self._fns)

    def run(self, key: Hashable, make: Callable[[], Fn], inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        key = (key, *(tuple(x.shape) for x in inputs))
        fn = self._fns.get(key)
        if fn is None:
            if self.compile_mode is not None:
                compiled = torch.compile(make(), mode=self.compile_mode, dynamic=False, fullgraph=True)

                def fn(xs: list[torch.Tensor], compiled=compiled) -> tuple[torch.Tensor, ...]:
                    if self.cuda:
                        torch.compiler.cudagraph_mark_step_begin()  # the last call's outputs are consumed
                    return compiled(*xs)
            elif self.cuda:
                fn = _Captured(make(), inputs, self._pool)
            else:
                plain = make()
                fn = lambda xs: plain(*xs)  # noqa: E731
            self._fns[key] = fn
        return fn(inputs)  # type: ignore[operator]
