"""llama.cpp (through llama-cpp-python) on the bench's own checkpoint: the row users would pick instead.

Timed with the same prompt token ids as fim-lsp and exactly as many generated tokens: the prompt pass is
the time to the first token (its evaluation and one sampling), each decode step the time between two
tokens (one single-token evaluation and one sampling), as fim-lsp's rows count them. Its prompt cache
works as in llama.vim / llama.vscode's server: what the previous request left in the KV cache is reused
up to the first token that differs, and only the rest is evaluated.

Optional: pip install -e '.[llamacpp]' builds llama-cpp-python; without it `missing()` says so."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INSTALL = "pip install -e '.[llamacpp]'"


def missing() -> str | None:
    """None when llama-cpp-python and gguf import, else what to run."""
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError as err:
        return (f"llama.cpp rows skipped: {err.name or err} is not installed. Install the optional extra with "
                f"`{INSTALL}` (it builds llama.cpp from source: ~25 minutes on 2 cores; "
                f"CMAKE_ARGS=\"-DGGML_NATIVE=ON\" builds for this CPU's instruction set)")
    return None


@dataclass
class LlamaTiming:
    total_s: float
    prompt_s: float  # to the first token: the prompt pass (the tokens not in the cache) and one sampling
    decode_ms_per_token: float | None  # between tokens: one single-token pass and one sampling
    evaluated: int  # prompt tokens evaluated, by llama.cpp's counters (the rest came from its cache)
    tokens: int


@contextmanager
def _extra_bufts(enabled: bool) -> Iterator[None]:
    """Load with llama.cpp's extra buffer types (its AMX and repacked weight layouts) on or off.

    llama-cpp-python 0.3.36's Llama takes no use_extra_bufts argument: its model parameters come from
    llama_model_default_params(), so while a model loads that one call is wrapped."""
    if enabled:
        yield
        return
    import llama_cpp.llama_cpp as low

    default = low.llama_model_default_params

    def params() -> Any:
        p = default()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = default


def extra_bufts_crash(path: Path, ids: list[int], threads: int) -> str | None:
    """None when a prompt pass over `ids` with llama.cpp's extra buffer types runs, else how it died.

    Run in a child process because a crash in llama.cpp kills its process: built with GGML_NATIVE on a
    CPU with AMX, its AMX matrix product faults on this bench's prompt pass (SIGSEGV in
    ggml_backend_amx_mul_mat, llama-cpp-python 0.3.36; ggml-org/llama.cpp#20824 reports the same)."""
    proc = subprocess.run([sys.executable, "-m", "fim_lsp.bench.llamacpp", str(path), str(threads)],
                          input=json.dumps(ids), capture_output=True, text=True, timeout=600)
    if proc.returncode == 0:
        return None
    died = (f"signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
            else f"exit status {proc.returncode}")
    return f"a prompt pass with llama.cpp's extra buffer types (AMX, repacked weights) died: {died}"


class LlamaCpp:
    """One GGUF model loaded with a fixed thread count; `run` times one completion. extra_bufts: False
    loads it without llama.cpp's extra buffer types (plain q8_0 / f32 kernels), where they crash."""

    def __init__(self, path: Path, threads: int, n_ctx: int = 2048, extra_bufts: bool = True) -> None:
        from llama_cpp import Llama

        self.path = Path(path)
        with _extra_bufts(extra_bufts):
            self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=512, n_threads=threads,
                             n_threads_batch=threads, seed=0, verbose=False)

    def run(self, prompt: list[int], tokens: int, cached: list[int] | None, temperature: float,
            top_p: float) -> LlamaTiming:
        """Generate `tokens` tokens after `prompt`. cached: the tokens of the previous request, evaluated
        first (untimed) so that its KV cache is what the prompt can reuse; None: cold, nothing cached."""
        import llama_cpp

        llm = self.llm
        llm.reset()
        if cached:
            llm.eval(cached)
        llama_cpp.llama_synchronize(llm.ctx)  # a pass's counts are added when it is waited for
        llama_cpp.llama_perf_context_reset(llm.ctx)
        stamps: list[float] = []
        start = time.perf_counter()
        # fim-lsp's sampling: temperature and top-p over the whole vocabulary, nothing else
        for _ in llm.generate(prompt, temp=temperature, top_p=top_p, top_k=0, min_p=0.0, repeat_penalty=1.0):
            stamps.append(time.perf_counter())
            if len(stamps) == tokens:
                break
        decode = (stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1000 if len(stamps) > 1 else None
        # llama.cpp's own counters: batches of several tokens count as prompt, single tokens as decode
        # (a prompt of one new token among them); each count reads at least 1
        perf = llama_cpp.llama_perf_context(llm.ctx)
        decoded = len(stamps) - 1
        evaluated = perf.n_p_eval if perf.n_eval <= decoded else perf.n_eval - decoded
        return LlamaTiming(total_s=stamps[-1] - start, prompt_s=stamps[0] - start, decode_ms_per_token=decode,
                           evaluated=evaluated, tokens=len(stamps))


def system_info() -> str:
    """The instruction sets llama.cpp was built with (its own report)."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode(errors="replace").strip()


def logits(path: Path, ids: list[int], threads: int = 2) -> Any:
    """llama.cpp's logits [len(ids), rows] for a prompt, every position, with an f32 KV cache (so only the
    weights' and the arithmetic's precision differ from transformers). Loaded without the extra buffer
    types: this checks the converted weights, and their AMX kernel crashes on some builds."""
    import numpy as np
    from llama_cpp import GGML_TYPE_F32, Llama

    with _extra_bufts(False):
        llm = Llama(model_path=str(path), n_ctx=max(64, len(ids)), n_batch=max(64, len(ids)), n_threads=threads,
                    logits_all=True, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, verbose=False)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


if __name__ == "__main__":
    # the child of extra_bufts_crash: one prompt pass (the ids on stdin) with the extra buffer types on
    model = LlamaCpp(Path(sys.argv[1]), int(sys.argv[2]))
    model.llm.eval(json.loads(sys.stdin.read()))
    model.llm.close()
