"""What produces the completions: the engine (every candidate kept) or the ground truth (self-check)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Protocol

from .data import Task


@dataclass
class Job:
    task: Task
    sample: int


class System(Protocol):
    name: str

    def info(self) -> dict[str, Any]: ...

    def generate(self, jobs: list[Job]) -> list[dict[str, Any]]:
        """One dict per job: candidates (model, text, perplexity, ...), winner_index, timings, notes."""
        ...


def fim_request(task: Task, dllm_length: int | None) -> Any:
    """The engine's request for a task: its text, and its project context and budget when it has them."""
    from fim_lsp.engine.ensemble import FimRequest
    return FimRequest(prefix=task.prefix, suffix=task.suffix, dllm_length=dllm_length, context=task.context,
                      budget=task.budget)


def prompt_sizes(comp: Any) -> dict[str, int]:
    """Tokens and context chunks each model was given (what the engine recorded)."""
    out = {}
    if comp.qwen_prompt is not None:
        out.update(qwen_tokens=len(comp.qwen_prompt.ids), qwen_chunks=len(comp.qwen_prompt.chunks))
    if comp.dllm_prompt is not None:
        p = comp.dllm_prompt
        out.update(dllm_tokens=len(p.prefix_ids) + len(p.suffix_ids), dllm_chunks=len(p.chunks))
    return out


class CanonicalSystem:
    """Feeds the ground-truth middle as the completion: the harness's own self-check (no models)."""

    name = "canonical"

    def info(self) -> dict[str, Any]:
        return {"system": self.name}

    def generate(self, jobs: list[Job]) -> list[dict[str, Any]]:
        return [{"candidates": [{"model": "canonical", "text": j.task.middle, "perplexity": None,
                                 "forward_passes": 0, "seconds": 0.0}],
                 "winner_index": 0, "timings": {}, "notes": []} for j in jobs]


class EnsembleSystem:
    """The server's engine; stores every candidate so one run scores each model, the ensemble, the
    oracle best-of-two and a random pick."""

    name = "ensemble"

    def __init__(self, args: argparse.Namespace, dllm_length: str) -> None:
        from fim_lsp.engine.config import config_from_args
        from fim_lsp.engine.ensemble import Engine

        self.config = config_from_args(args)
        self.dllm_length = dllm_length  # "oracle", "engine" (the config's own lengths) or an integer string
        self.engine = Engine(self.config)
        self.engine.load()
        self._tokenizer: Any = None

    def info(self) -> dict[str, Any]:
        import dataclasses
        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self.config).items()}
        return {"system": self.name, "dllm_length": self.dllm_length, "engine": cfg}

    def _oracle_length(self, middle: str) -> int:
        if self._tokenizer is None:
            dllm = getattr(self.engine, "dllm", None)
            self._tokenizer = getattr(dllm, "tokenizer", None)
            if self._tokenizer is None:
                from transformers import AutoTokenizer
                self._tokenizer = AutoTokenizer.from_pretrained(self.config.dllm_model)
        # an empty middle (14 random-span tasks) still needs a hole of at least one token
        return max(1, len(self._tokenizer(middle, add_special_tokens=False)["input_ids"]))

    def _length(self, task: Task) -> int | None:
        if self.dllm_length == "oracle":
            return self._oracle_length(task.middle)
        if self.dllm_length == "engine":
            return None
        return int(self.dllm_length)

    def generate(self, jobs: list[Job]) -> list[dict[str, Any]]:
        import time

        # the engine seeds its generators on every call: sample s uses seed + s, so samples differ from
        # each other and a resumed run regenerates exactly what an uninterrupted one would have
        assert len({j.sample for j in jobs}) == 1, "one sample index per batch"
        if self.config.seed is not None:
            self.engine.reconfigure(self.config.replace(seed=self.config.seed + jobs[0].sample))
        lengths = [self._length(j.task) for j in jobs]
        reqs = [fim_request(j.task, n) for j, n in zip(jobs, lengths)]
        t0 = time.monotonic()
        results = self.engine.complete_batch(reqs, cancel=None)
        wall = time.monotonic() - t0
        out = []
        for comp, n in zip(results, lengths):
            d = comp.to_dict(token_logprobs=False)
            out.append({"candidates": d["candidates"], "winner_index": d["winner_index"],
                        "timings": d["timings"], "notes": d["notes"], "dllm_length": n,
                        "prompt": prompt_sizes(comp),
                        # a batch's wall time shared evenly: per-task latency when batched
                        "batch_seconds": wall / len(jobs)})
        return out
