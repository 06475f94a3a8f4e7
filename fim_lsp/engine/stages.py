"""Run the generators one after the other, or side by side on a GPU."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch


def _timed(fn: Callable[[], object], own_stream: bool) -> tuple[object, float]:
    start = time.perf_counter()
    if own_stream:
        # each model on its own CUDA stream, so one model's kernels fill the gaps the other leaves
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            result = fn()
        stream.synchronize()
    else:
        result = fn()
    return result, time.perf_counter() - start


def run_stages(stages: dict[str, Callable[[], object]], concurrent: bool) -> tuple[dict[str, object], dict[str, float]]:
    """Results and seconds per stage. On CPU the stages run in turn: two models fighting over the
    same cores are slower together than one after the other."""
    if not concurrent or len(stages) < 2:
        timed = {name: _timed(fn, False) for name, fn in stages.items()}
    else:
        with ThreadPoolExecutor(max_workers=len(stages)) as pool:
            futures = {name: pool.submit(_timed, fn, True) for name, fn in stages.items()}
            timed = {name: f.result() for name, f in futures.items()}
    return {k: r for k, (r, _) in timed.items()}, {k: s for k, (_, s) in timed.items()}
