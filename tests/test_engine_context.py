"""The engine builds every model's prompt through prompt.py: a request's project context and budget
reach Qwen, the scorer and the diffusion model, the completion carries what each model was given, and
the part of Qwen's prompt that stays from keystroke to keystroke is not run again (prefix reuse)."""
from __future__ import annotations

from pathlib import Path

import pytest

from fim_lsp.engine.ar_fim import fim_ids
from fim_lsp.engine.config import EngineConfig
from fim_lsp.engine.ensemble import Engine
from fim_lsp.engine.prompt import dllm_prompt, qwen_prompt
from fim_lsp.engine.requests import ContextChunk, FimRequest, ProjectContext, PromptBudget

PREFIX = "from util import area\n\ndef main():\n    return "
SUFFIX = "\n\nprint(main())\n"
CONTEXT = ProjectContext(repo="demo", path="app/main.py", chunks=(
    ContextChunk("app/util.py", "def area(w, h):\n    return w * h\n", 0, 2, "definition", 2.0),
    ContextChunk("app/notes.py", "NOTE = 'kept for later'\n", 0, 1, "open-file", 1.0),
))


@pytest.fixture(scope="module")
def engine(tiny_models: Path) -> Engine:
    cfg = EngineConfig(ar_model=str(tiny_models / "ar"), dllm_model=str(tiny_models / "dllm"), device="cpu",
                       max_new_tokens=4, steps=2, dllm_lengths=(4,), temperature=0.0, seed=0)
    eng = Engine(cfg)
    eng.load()
    return eng


def test_the_context_reaches_each_model_and_the_completion_says_what_they_saw(engine: Engine) -> None:
    budget = PromptBudget()
    comp = engine.complete_batch([FimRequest(PREFIX, SUFFIX, context=CONTEXT, budget=budget)])[0]
    tok = engine.ar.tokenizer
    want = qwen_prompt(tok, PREFIX, SUFFIX, CONTEXT, budget)
    assert comp.qwen_prompt.ids == want.ids
    assert comp.qwen_prompt.text.startswith("<|repo_name|>demo\n<|file_sep|>app/util.py\ndef area(w, h):")
    assert "<|file_sep|>app/main.py\n<|fim_prefix|>" + PREFIX in comp.qwen_prompt.text
    # the prompt pass ran over every token of that prompt (nothing held before for this row's context)
    assert comp.prompt_tokens["computed"] + comp.prompt_tokens["reused"] == len(want.ids)
    dtok = engine.dllm.tokenizer
    dwant = dllm_prompt(dtok, PREFIX, SUFFIX, CONTEXT, budget, hole_tokens=4)
    assert (comp.dllm_prompt.prefix_ids, comp.dllm_prompt.suffix_ids) == (dwant.prefix_ids, dwant.suffix_ids)
    assert comp.dllm_prompt.prefix_text.startswith("# app/util.py\ndef area(w, h):")
    assert "<|repo_name|>" not in comp.dllm_prompt.text("")


def test_without_context_or_budget_the_prompt_is_the_plain_fim_prompt(engine: Engine) -> None:
    """The eval's requests: unchanged by project context."""
    comp = engine.complete_batch([FimRequest(PREFIX, SUFFIX)])[0]
    assert comp.qwen_prompt.ids == fim_ids(engine.ar.tokenizer, PREFIX, SUFFIX)
    assert comp.qwen_prompt.chunks == ()


def test_a_keystroke_runs_only_what_changed(engine: Engine) -> None:
    """One character typed: the repo-level context before the current file is kept in Qwen's cache
    and only the tokens from the first difference on go through the network."""
    budget = PromptBudget()
    first = engine.complete_batch([FimRequest(PREFIX, SUFFIX, context=CONTEXT, budget=budget)])[0]
    typed = engine.complete_batch([FimRequest(PREFIX + "a", SUFFIX, context=CONTEXT, budget=budget)])[0]
    context_tokens = typed.qwen_prompt.context_tokens
    assert context_tokens > 0 and first.qwen_prompt.ids[:context_tokens] == typed.qwen_prompt.ids[:context_tokens]
    assert typed.prompt_tokens["reused"] >= context_tokens
    assert typed.prompt_tokens["computed"] == len(typed.qwen_prompt.ids) - typed.prompt_tokens["reused"]
    assert typed.prompt_tokens["computed"] < len(typed.qwen_prompt.ids) - context_tokens
