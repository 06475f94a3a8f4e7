"""Qwen's runner on token ids, CPU, tiny checkpoints in fp32: the prompt pass that keeps what the cache
holds of each row's prompt (prefix reuse), equal to a full recompute; the eager mode attending only over
the slots a pass needs; scoring on a cached prompt equal to the full-pass scorer on the same ids."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fim_lsp.engine import static_model
from fim_lsp.engine.ar_fim import fim_ids, stop_ids
from fim_lsp.engine.loading import encode, load_model
from fim_lsp.engine.qwen_runner import QwenRunner
from fim_lsp.engine.requests import ArParams
from fim_lsp.engine.scorer import ScoreItem, score_batch

CPU = torch.device("cpu")
SOURCE = (Path(__file__).resolve().parents[1] / "fim_lsp" / "tiny.py").read_text()
PARAMS = ArParams(temperature=0.0, max_new_tokens=6)


@pytest.fixture(scope="module")
def talkative(tiny_models):
    """The tiny Qwen with its stop tokens' rows zeroed, so every generation runs its whole budget."""
    lm = load_model(str(tiny_models / "ar"), "ar", CPU, torch.float32)
    with torch.no_grad():
        lm.model.get_output_embeddings().weight[stop_ids(lm.tokenizer)] = 0
    return lm


def typing(lm) -> list[list[int]]:
    """A user typing at a cursor 400 characters into the file: the prompt of each keystroke."""
    before, after = SOURCE[:400], SOURCE[400:600]
    typed = ["", "d", "de", "def", "def ", "def g", "def g(", "def g():"]
    return [fim_ids(lm.tokenizer, before + t, after) for t in typed]


@pytest.mark.parametrize("static", [False, True], ids=["eager", "static"])
def test_kept_prefix_equals_a_full_recompute_while_typing(talkative, static):
    kept, fresh = QwenRunner(talkative, static=static), QwenRunner(talkative, static=static)
    last: list[int] = []
    for prompt in typing(talkative):
        a, pa = kept.generate([prompt], PARAMS, keep=True)
        b, pb = fresh.generate([prompt], PARAMS, keep=False)
        common = next((i for i, (x, y) in enumerate(zip(last, prompt)) if x != y), min(len(last), len(prompt)))
        assert pa.reused == min(common, len(prompt) - 1) and pa.computed == len(prompt) - pa.reused
        assert pb.reused == 0 and pb.computed == len(prompt)
        assert a[0].token_ids == b[0].token_ids and len(a[0].token_ids) == PARAMS.max_new_tokens
        assert a[0].logprobs == pytest.approx(b[0].logprobs, abs=1e-4)
        items = [(0, "x = 1"), (0, "")]
        assert [s.perplexity for s in kept.score(pa, items)] == pytest.approx(
            [s.perplexity for s in fresh.score(pb, items)], rel=1e-4)
        last = prompt
    # the text before the cursor is kept (up to a token the keystroke merged into): the FIM layout puts
    # the suffix after it, so what is recomputed is the typed line and the suffix
    assert pa.reused >= len(encode(talkative.tokenizer, SOURCE[:400])) - 1


def test_the_same_prompt_again_recomputes_only_its_last_token(talkative):
    runner = QwenRunner(talkative)
    prompt = typing(talkative)[0]
    first, _ = runner.generate([prompt], PARAMS)
    again, state = runner.generate([prompt], PARAMS)
    assert state.reused == len(prompt) - 1 and state.computed == 1  # its logits start the decode
    assert again[0].token_ids == first[0].token_ids


def test_each_row_keeps_its_own_prefix(talkative):
    """Rows of a batch share nothing: a row whose prompt changed near its start recomputes from there,
    the others keep theirs, and every row equals a full recompute."""
    runner, fresh = QwenRunner(talkative), QwenRunner(talkative)
    a, b = typing(talkative)[0], fim_ids(talkative.tokenizer, SOURCE[1000:1300], SOURCE[1300:1400])
    runner.generate([a, b], PARAMS)
    b2 = fim_ids(talkative.tokenizer, "# " + SOURCE[1000:1300], SOURCE[1300:1400])
    a2 = typing(talkative)[3]
    gens, state = runner.generate([a2, b2], PARAMS)
    want, _ = fresh.generate([a2, b2], PARAMS, keep=False)
    common_a = next(i for i, (x, y) in enumerate(zip(a, a2)) if x != y)
    assert state.reused == common_a + 1  # row 1 keeps its <|fim_prefix|> token alone
    assert [g.token_ids for g in gens] == [g.token_ids for g in want]


def test_eager_passes_attend_only_over_the_slots_they_need(talkative, monkeypatch):
    """compile off: the prompt pass has no padded queries and attends over the prompt's slots; each
    decode step over the slots written so far. The static mode on CPU: the prompt and scoring passes
    the same (plain calls: padding would only add work), the compiled decode step over the whole cache."""
    seen: list[tuple[int, int]] = []
    sdpa = static_model.F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append((q.size(-2), k.size(-2)))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(static_model.F, "scaled_dot_product_attention", spy)
    prompt = typing(talkative)[0]
    layers = talkative.model.config.num_hidden_layers
    QwenRunner(talkative).generate([prompt], PARAMS, keep=False)
    passes = seen[::layers]
    assert passes[0] == (len(prompt), len(prompt))
    assert passes[1:] == [(1, len(prompt) + k + 1) for k in range(PARAMS.max_new_tokens - 1)]
    seen.clear()
    runner = QwenRunner(talkative, static=True, decode_compile="default")
    _, state = runner.generate([prompt], PARAMS, keep=False)
    assert seen[::layers][0] == (len(prompt), len(prompt))  # the compiled steps run past this spy
    seen.clear()
    runner.score(state, [(0, "x = 1")])
    scored = len(encode(talkative.tokenizer, "x = 1")) + 1
    assert seen[::layers] == [(scored, len(prompt) + scored)]
    seen.clear()
    QwenRunner(talkative, static=True).generate([prompt], PARAMS, keep=False)  # the decode step plain
    length = runner.caches[1].kv.length
    assert seen[::layers][1:] == [(1, length)] * (PARAMS.max_new_tokens - 1)


@pytest.mark.parametrize("static", [False, True], ids=["eager", "static"])
def test_scoring_on_the_cached_prompt_equals_the_full_pass(talkative, static):
    """One scorer for both modes, against transformers' full pass on the same prompt ids, with two rows
    of different lengths (the shorter row's padding slots must stay unseen)."""
    runner = QwenRunner(talkative, static=static)
    prompts = [typing(talkative)[2], fim_ids(talkative.tokenizer, "x = ", "\n")]
    _, state = runner.generate(prompts, PARAMS)
    items = [(0, "value = 1\n"), (1, "compute(x)"), (1, ""), (0, "é")]
    want = score_batch(talkative, [ScoreItem("", "", text, prompts[row]) for row, text in items])
    got = runner.score(state, items)
    for g, w in zip(got, want):
        assert g.tokens == w.tokens
        assert g.token_logprobs == pytest.approx(w.token_logprobs, abs=1e-4)


def test_a_prompt_pass_that_fails_leaves_nothing_kept_past_its_common_prefix(talkative, monkeypatch):
    """A prompt pass that raises half-way (out of memory, say) has overwritten the row's slots after
    the kept prefix; the next request must recompute them, not keep what the row held before."""
    runner = QwenRunner(talkative)
    first, edited = typing(talkative)[0], fim_ids(talkative.tokenizer, SOURCE[:200], SOURCE[200:600])
    runner.generate([first], PARAMS)
    forward = static_model.StaticQwen2.forward

    def half_way(self, ids, *args, **kwargs):  # writes the edited prompt's keys, then fails
        forward(self, ids, *args, **kwargs)
        raise RuntimeError("failed after writing the cache")

    with monkeypatch.context() as m:
        m.setattr(static_model.StaticQwen2, "forward", half_way)
        with pytest.raises(RuntimeError):
            runner.generate([edited], PARAMS)
    again, state = runner.generate([first], PARAMS)
    common = next(i for i, (x, y) in enumerate(zip(first, edited)) if x != y)
    assert state.reused == common  # not len(first) - 1: the slots after the common prefix were rewritten
    want, _ = QwenRunner(talkative).generate([first], PARAMS)
    assert again[0].token_ids == want[0].token_ids


@pytest.mark.parametrize("static", [False, True], ids=["eager", "static"])
def test_end_logprob_after_a_generation_equals_the_scoring_pass(talkative, static):
    """A middle cut by its budget never asked for the end token: one decode step on the keys the
    generation left gives log P(<|endoftext|>) as the scoring pass over its tokens does, for a row of a
    batch with rows of other lengths, and for a shorter run of the row's tokens; temperature 0 and not."""
    for params in (PARAMS, ArParams(temperature=0.6, top_p=0.95, max_new_tokens=6)):
        runner = QwenRunner(talkative, static=static)
        prompts = [fim_ids(talkative.tokenizer, "x = ", "\n"), typing(talkative)[2]]
        gens, state = runner.generate(prompts, params, torch.Generator().manual_seed(0))
        assert [len(g.token_ids) for g in gens] == [6, 6] and gens[1].end_logprob is None
        items = [(1, gens[1].token_ids), (0, gens[0].token_ids[:3]), (0, [])]
        eos = runner.eos
        with torch.inference_mode():  # transformers' full pass over the prompt and the tokens
            want = [float(talkative.model(torch.tensor([prompts[row] + ids])).logits[0, -1].float()
                          .log_softmax(-1)[eos]) for row, ids in items]
        assert runner.end_logprobs(state, items, params) == pytest.approx(want, abs=1e-5)


def test_end_logprob_refuses_a_cache_that_moved_on(talkative):
    runner = QwenRunner(talkative)
    gens, state = runner.generate([typing(talkative)[0]], PARAMS)
    with pytest.raises(ValueError, match="not what the row decoded"):
        runner.end_logprobs(state, [(0, [gens[0].token_ids[0] + 1, *gens[0].token_ids[1:]])], PARAMS)
    runner.prefill([typing(talkative)[1]])
    with pytest.raises(ValueError, match="last generation"):
        runner.end_logprobs(state, [(0, gens[0].token_ids)], PARAMS)
