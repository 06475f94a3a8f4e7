"""No pass copies the KV cache or the output layer (issue 20): on CPU in bf16, a scatter_ into the cache
copied the whole cache tensor on every call, and repeating the grouped keys for attention copied them 7x
per layer. Checked on the ops themselves (a dispatch mode sees every aten call of Qwen's runner), with the
tiny checkpoint in bf16, eager and static modes, batch of 2 (per-row slots), prompt pass, decode steps,
the end step and the scoring pass."""
from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fim_lsp.engine.ar_fim import fim_ids
from fim_lsp.engine.loading import load_model
from fim_lsp.engine.qwen_runner import QwenRunner
from fim_lsp.engine.requests import ArParams

SOURCE = (Path(__file__).resolve().parents[1] / "fim_lsp" / "tiny.py").read_text()
# ops that write a new copy of what they read, or rewrite all of their destination
COPYING = ("copy", "clone", "contiguous", "scatter", "repeat", "bmm", "cat", "expand_copy", "stack")


class Copies(TorchDispatchMode):
    """Records every copying op that reads or writes the storage of one of `watched`."""

    def __init__(self, watched: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.watched = {t.untyped_storage().data_ptr(): name for name, t in watched.items()}
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if any(c in name for c in COPYING):
            for a in [*args, *(kwargs or {}).values()]:
                if isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() in self.watched:
                    where = traceback.extract_stack()[-2]
                    self.seen.append(f"{name} on {self.watched[a.untyped_storage().data_ptr()]} "
                                     f"({Path(where.filename).name}:{where.lineno})")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("static", [False, True], ids=["eager", "static"])
def test_no_pass_copies_the_cache_or_the_output_layer(tiny_models, static):
    lm = load_model(str(tiny_models / "ar"), "ar", torch.device("cpu"), torch.bfloat16)
    runner = QwenRunner(lm, static=static)
    params = ArParams(temperature=0.6, top_p=0.95, max_new_tokens=4)
    prompts = [fim_ids(lm.tokenizer, SOURCE[:300], SOURCE[300:400]), fim_ids(lm.tokenizer, "x = ", "\n")]
    runner.generate(prompts, params)  # the cache exists from here on
    kv = runner.caches[2].kv
    watched = {"the output layer": lm.model.get_output_embeddings().weight,
               **{f"layer {i}'s keys": k for i, k in enumerate(kv.keys)},
               **{f"layer {i}'s values": v for i, v in enumerate(kv.values)}}
    with Copies(watched) as spy:
        gens, state = runner.generate(prompts, params, torch.Generator().manual_seed(0))
        runner.end_logprobs(state, [(0, gens[0].token_ids)], params)
        runner.score(state, [(0, "x = 1"), (1, "y")])
    assert spy.seen == []
