"""llama.cpp (through llama-cpp-python) on the bench's own checkpoint: the row users would pick instead.

Timed with the same prompt token ids as fim-lsp and exactly as many generated tokens: the prompt pass is
the time to the first token (its evaluation and one sampling), each decode step the time between two
tokens (one single-token evaluation and one sampling), as fim-lsp's rows count them. Its prompt cache
works as in llama.vim / llama.vscode's server: what the previous request left in the KV cache is reused
up to the first token that differs, and only the rest is evaluated.

Optional: pip install -e '.[llamacpp]' builds llama-cpp-python; without it `missing()` says so."""
from __future__ import annotations

import time
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


class LlamaCpp:
    """One GGUF model loaded with a fixed thread count; `run` times one completion."""

    def __init__(self, path: Path, threads: int, n_ctx: int = 2048) -> None:
        from llama_cpp import Llama

        self.path = Path(path)
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
    weights' and the arithmetic's precision differ from transformers)."""
    import numpy as np
    from llama_cpp import GGML_TYPE_F32, Llama

    llm = Llama(model_path=str(path), n_ctx=max(64, len(ids)), n_batch=max(64, len(ids)), n_threads=threads,
                logits_all=True, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, verbose=False)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()
