"""The GPU latency path, run on CPU with tiny checkpoints: the static-shape forward, the runners' static
mode (the compiled decode loop) against their eager mode and against transformers' own generate,
single-line mode, and the greedy sampler without a full-vocabulary sort.

CUDA graph capture itself needs a GPU and is not exercised here; on CPU the same static-shape functions
run torch.compile'd (decode step) or plain (prompt pass, diffusion pass), which is what is compared with
the eager path."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fim_lsp.engine import sampling
from fim_lsp.engine.ar_fim import fim_ids, stop_ids
from fim_lsp.engine.bidirectional import bidirectional_logits, logits_finish, static_full_pass
from fim_lsp.engine.config import EngineConfig, effective
from fim_lsp.engine.diffusion import DiffusionParams
from fim_lsp.engine.dllm_runner import DllmRunner
from fim_lsp.engine.ensemble import Engine, FimRequest
from fim_lsp.engine.graphs import GraphSet, bucket
from fim_lsp.engine.line_stop import LineStop
from fim_lsp.engine.loading import encode, load_model, mask_token_id
from fim_lsp.engine.qwen_runner import QwenRunner
from fim_lsp.engine.requests import ArParams, RowLimits
from fim_lsp.engine.scorer import ScoreItem, score_batch
from fim_lsp.engine.static_model import StaticQwen2
from fim_lsp.selfcheck.reference import transformers_greedy

from forced import write_forced

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
SOURCE = (ROOT / "fim_lsp" / "tiny.py").read_text()
REQUESTS = [(SOURCE[:300], SOURCE[300:500]), (SOURCE[:1200], SOURCE[1200:1400]), ("x = ", "\n")]


def prompts(lm, requests):
    return [fim_ids(lm.tokenizer, p, s) for p, s in requests]


def holes(lm, requests):
    return [(encode(lm.tokenizer, p), encode(lm.tokenizer, s), n) for p, s, n in requests]


@pytest.fixture(scope="module")
def ar(tiny_models):
    return load_model(str(tiny_models / "ar"), "ar", CPU, torch.float32)


@pytest.fixture(scope="module")
def talkative(tiny_models):
    """The tiny Qwen with its stop tokens' output rows zeroed: at temperature 0 the random tiny model
    otherwise stops at once, and a decode loop of one token compares nothing."""
    lm = load_model(str(tiny_models / "ar"), "ar", CPU, torch.float32)
    with torch.no_grad():
        lm.model.get_output_embeddings().weight[stop_ids(lm.tokenizer)] = 0
    return lm


@pytest.fixture(scope="module")
def forced(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("forced")
    cycle = write_forced(tiny_models / "ar", out)
    return out, cycle


def test_static_forward_equals_transformers(ar):
    net = StaticQwen2(ar.model)
    ids = torch.randint(0, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[1, :4] = False  # left padding
    # bidirectional (the diffusion pass): 4-D all-attend mask with pad keys out
    mask = valid[:, None, None, :].expand(-1, 1, 12, -1)
    pos = torch.arange(12).expand(2, -1)
    ref = ar.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    mine = net.forward(ids, pos, mask | torch.eye(12, dtype=torch.bool))
    assert torch.allclose(ref[0], mine[0], atol=1e-5) and torch.allclose(ref[1, 4:], mine[1, 4:], atol=1e-5)
    # causal, writing a 16-slot cache
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    ref = ar.model(input_ids=ids, attention_mask=valid.long(), position_ids=positions).logits
    cache = net.new_cache(2, 16)
    slots, query = torch.arange(16), torch.arange(12)
    kv_valid = torch.ones(2, 16, dtype=torch.bool)
    kv_valid[:, :12] = valid
    causal = (kv_valid[:, None, :] & (slots <= query[:, None])) | (slots == query[:, None])
    mine = net.forward(ids, positions, causal[:, None], cache, query)
    assert torch.allclose(ref[0], mine[0], atol=1e-5) and torch.allclose(ref[1, 4:], mine[1, 4:], atol=1e-5)
    assert cache.keys[0][:, :, 12:].abs().sum() == 0  # nothing written past the pass's slots


def test_compiled_decode_emits_the_eager_tokens_at_temperature_0(talkative):
    """compile on, CPU: the decode step runs torch.compile'd. Token for token equal to the eager mode,
    with the same log-probs and the same fim-mode scores on the kept prompt; and both equal to
    transformers' own generate and full scoring pass (the eager mode runs the runner's functions too)."""
    params = ArParams(temperature=0.0, max_new_tokens=12)
    ids = prompts(talkative, REQUESTS)
    eager_runner = QwenRunner(talkative)
    eager, eager_prompt = eager_runner.generate(ids, params)
    static = QwenRunner(talkative, static=True, decode_compile="default")
    compiled, static_prompt = static.generate(ids, params)
    # a real loop, not one token (a partial character at the budget is dropped, hence not always 12)
    assert all(g.forward_passes == 12 and len(g.token_ids) >= 9 for g in eager)
    stops = stop_ids(talkative.tokenizer)
    for e, c, p in zip(eager, compiled, ids):
        assert c.token_ids == e.token_ids
        assert c.forward_passes == e.forward_passes == 12
        assert c.logprobs == pytest.approx(e.logprobs, abs=1e-4)
        ref = transformers_greedy(talkative, p, 12, stops)
        assert e.token_ids == ref.tokens[: len(e.token_ids)]
        assert e.logprobs == pytest.approx(ref.logprobs[: len(e.logprobs)], abs=1e-4)
    items = [(0, "foo(1)"), (1, "bar\n"), (2, "")]
    want = [s.perplexity for s in score_batch(talkative, [ScoreItem("", "", t, ids[r]) for r, t in items])]
    assert [s.perplexity for s in eager_runner.score(eager_prompt, items)] == pytest.approx(want, rel=1e-4)
    assert [s.perplexity for s in static.score(static_prompt, items)] == pytest.approx(want, rel=1e-4)
    # a second request of another width replays the same compiled step and refills the same cache
    again, _ = static.generate(ids[2:], params)
    assert again[0].token_ids == eager[2].token_ids
    assert len(static.decode_graphs) == 2  # one decode step per batch size, not one per request


def test_row_budgets_and_single_line_stop_on_both_paths(forced):
    path, cycle = forced
    lm = load_model(str(path), "ar", CPU, torch.float32)
    reqs = prompts(lm, [("def f():\n    ", "\n"), ("a", "b"), ("c", "d")])
    limits = lambda: RowLimits([10, 10, 3], [True, False, False])  # noqa: E731
    params = ArParams(temperature=0.6, max_new_tokens=64)  # sampling: the forced logits still decide
    eager, _ = QwenRunner(lm).generate(reqs, params, limits=limits())
    static, _ = QwenRunner(lm, static=True).generate(reqs, params, limits=limits())
    line = lm.tokenizer.decode(cycle)
    for gens in (eager, static):
        assert [g.text for g in gens] == [line, line + line, lm.tokenizer.decode(cycle[:3])]
        assert gens[0].token_ids == cycle and gens[0].end_logprob is None
        assert gens[0].forward_passes == 10  # the batch ran on for its longest row
    alone, _ = QwenRunner(lm, static=True).generate(reqs[:1], params, limits=RowLimits([64], [True]))
    assert alone[0].forward_passes == len(cycle)  # nothing computed past the newline


def test_line_stop_rule_on_the_real_tokenizer(shared_data):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(shared_data / "tokenizers" / "qwen2.5-coder"))
    rule = LineStop.from_tokenizer(tok, CPU)

    def stops_after(text: str) -> int | None:
        seen = torch.zeros(1, dtype=torch.bool)
        for n, tid in enumerate(encode(tok, text), 1):
            stop, seen = rule.step(torch.tensor([tid]), seen)
            if stop:
                return n
        return None

    assert stops_after("\n\n    return x\n    y") == len(encode(tok, "\n\n    return x\n"))
    assert stops_after("\n   \n") is None  # blank lines alone never end the line
    assert stops_after("foo()") is None
    assert rule.has_newline[encode(tok, "\n")[0]] and not rule.has_text[encode(tok, "\n")[0]]


def test_cli_single_line_stops_qwen_at_the_newline(forced, tmp_path):
    path, cycle = forced
    src = tmp_path / "a.py"
    src.write_text("def f():\n    \n")
    run = lambda *extra: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "fim_lsp", "complete", "--file", str(src), "--line", "1", "--col", "4",
         "--ar-model", str(path), "--models", "qwen", "--max-new-tokens", "40", "--json", *extra],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    single, multi = run("--single-line"), run()
    assert single.returncode == 0 and multi.returncode == 0, single.stderr + multi.stderr
    qwen = json.loads(single.stdout)["candidates"][0]
    assert qwen["forward_passes"] == qwen["tokens"] == len(cycle)
    assert qwen["text"].endswith("\n") and qwen["text"].count("\n") == 1
    assert json.loads(multi.stdout)["candidates"][0]["forward_passes"] == 40


def test_engine_single_line_uses_its_own_hole_lengths(tiny_models):
    cfg = EngineConfig(ar_model=str(tiny_models / "ar"), dllm_model=str(tiny_models / "dllm"), device="cpu",
                       max_new_tokens=4, steps=4, dllm_lengths=(4, 8, 12), dllm_lengths_single_line=(2, 4))
    engine = Engine(cfg)
    engine.load()
    assert not engine.compiled  # compile auto is off on CPU
    single, multi = engine.complete_batch([FimRequest("x = ", "\n", single_line=True), FimRequest("x = ", "\n")])
    assert [c.hole_length for c in single.candidates if c.model == "dllm"] == [2, 4]
    assert [c.hole_length for c in multi.candidates if c.model == "dllm"] == [4, 8, 12]
    assert "qwen_prefill" in single.timings


def test_static_diffusion_pass_equals_the_plain_pass(tiny_models):
    dllm = load_model(str(tiny_models / "dllm"), "dllm", CPU, torch.float32)
    mid = mask_token_id(dllm.tokenizer)
    static = DllmRunner(dllm, mid, static=True)
    reqs = holes(dllm, [("def f(a):\n    return ", "\n\nf(1)\n", 6), ("x = ", "\n", 3)])
    params = DiffusionParams(steps=6, temperature=0.0)
    plain = DllmRunner(dllm, mid).infill(reqs, params)
    padded = static.infill(reqs, params)
    assert [g.token_ids for g in padded] == [g.token_ids for g in plain]
    assert len(static.graphs) == 1  # one shape: the batch padded to a multiple of 64
    # and the logits themselves, padded width against exact width
    ids = encode(dllm.tokenizer, "def f(a):\n    return ") + [mid] * 4
    x = torch.tensor([ids])
    rows = torch.arange(len(ids) - 5, len(ids) - 1)
    exact = bidirectional_logits(dllm, torch.ones_like(x, dtype=torch.bool), [mid])(x, rows)
    width = bucket(len(ids), 64)
    xp = torch.full((1, width), 0)
    xp[0, : len(ids)] = x[0]
    valid = torch.zeros((1, width), dtype=torch.bool)
    valid[0, : len(ids)] = True
    graphs = GraphSet(CPU, "test")
    call = static_full_pass(StaticQwen2(dllm.model), graphs.run, valid)
    (mine,) = call(xp, rows, torch.zeros(1, 4), ("logits",), logits_finish([mid], len(dllm.tokenizer), CPU))
    assert torch.allclose(mine, exact, atol=1e-5)


def test_static_dual_cache_infill_equals_the_eager_dual_cache(tiny_models):
    """A request on the static DualCache path: one refresh graph, then one block graph per step, both
    replayed by the next request of the same shape; the tokens of the eager DualCache path."""
    dllm = load_model(str(tiny_models / "dllm"), "dllm", CPU, torch.float32)
    mid = mask_token_id(dllm.tokenizer)
    static = DllmRunner(dllm, mid, static=True)
    keys: list[str] = []
    run = static.graphs.run
    static.graphs.run = lambda key, make, inputs: keys.append(key[:2]) or run(key, make, inputs)  # type: ignore[method-assign]
    reqs = holes(dllm, [("def f(a):\n    return ", "\n\nf(1)\n", 6), ("x = ", "\n", 3)])
    params = DiffusionParams(steps=6, temperature=0.0, cache_refresh=8)
    eager = DllmRunner(dllm, mid).infill(reqs, params)
    for _ in range(2):  # the second request refreshes the kept cache and replays the same two graphs
        keys.clear()
        graphed = static.infill(reqs, params)
        assert [g.token_ids for g in graphed] == [g.token_ids for g in eager]
        assert max(g.forward_passes for g in graphed) == 6
        assert keys == [("dual_full", 0)] + [("dual_block", 0)] * 5
        assert len(static.graphs) == 2 and list(static.buffers) == [2]  # one K/V buffer per batch size
    # a wider batch: views of the same buffer at the next 64-token width, two graphs of its own
    wide = holes(dllm, [("def f(a):\n    return ", "\n" + "y = f(1)\n" * 20, 6), ("x = ", "\n", 3)])
    graphed = static.infill(wide, params)
    assert [g.token_ids for g in graphed] == [g.token_ids for g in DllmRunner(dllm, mid).infill(wide, params)]
    assert len(static.graphs) == 4 and list(static.buffers) == [2]


def test_gumbel_sampler_draws_the_filtered_distribution():
    """sample_with_noise (used inside the captured decode step) against the probabilities that
    sample_tokens draws from: 20000 seeded draws over a 6-token vocabulary."""
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.2, -1.0, -3.0]])
    probs = torch.softmax(sampling.filter_logits(logits / 0.7, 0.9, None), dim=-1)[0]
    noise = torch.rand((20000, 6), generator=torch.Generator().manual_seed(1))
    draws = sampling.sample_with_noise(logits.expand(20000, -1), noise, 0.7, 0.9, None)
    freq = torch.bincount(draws, minlength=6).float() / 20000
    assert torch.allclose(freq, probs, atol=0.015)
    assert freq[4] == 0 and freq[5] == 0  # outside the nucleus: never drawn


def test_profiles_per_device():
    cpu = effective(EngineConfig(profile="editor"), "cpu")
    cuda = effective(EngineConfig(profile="editor"), "cuda")
    assert cpu.dllm_cache_refresh == 8 and cuda.dllm_cache_refresh == 0
    assert effective(EngineConfig(profile="editor", dllm_cache_refresh=4), "cuda").dllm_cache_refresh == 4
    with pytest.raises(ValueError, match="compile"):
        EngineConfig(compile="yes").validate()


def test_engine_compile_on_matches_compile_off(tiny_models):
    """The whole engine on the static path (CPU: compiled decode, plain static passes), warm-up included,
    against the eager engine at temperature 0: the same candidates and the same perplexities."""
    cfg = EngineConfig(ar_model=str(tiny_models / "ar"), dllm_model=str(tiny_models / "dllm"), device="cpu",
                       temperature=0.0, max_new_tokens=6, steps=4, dllm_lengths=(4, 8), compile="on")
    messages: list[str] = []
    static = Engine(cfg)
    static.load(on_progress=messages.append)
    eager = Engine(cfg.replace(compile="off"))
    eager.load()
    assert static.compiled and not eager.compiled
    assert any(m.startswith("warming up") for m in messages)
    reqs = [FimRequest(SOURCE[:300], SOURCE[300:500]), FimRequest("x = ", "\n", single_line=True)]
    for a, b in zip(static.complete_batch(reqs), eager.complete_batch(reqs)):
        assert [(c.model, c.text) for c in a.candidates] == [(c.model, c.text) for c in b.candidates]
        assert [c.perplexity for c in a.candidates] == pytest.approx([c.perplexity for c in b.candidates], rel=1e-4)


def test_a_budget_inside_a_character_keeps_whole_characters(tiny_models, tmp_path):
    """A forced model writes "xé" over and over; "é" is two byte tokens, so an odd budget stops between
    them. Both paths drop the partial character from the text and the ids, and its log-prob."""
    cycle = write_forced(tiny_models / "ar", tmp_path, line="xé")
    assert len(cycle) == 3  # x, and é's two bytes
    lm = load_model(str(tmp_path), "ar", CPU, torch.float32)
    params = ArParams(temperature=0.0, max_new_tokens=5)
    ids = prompts(lm, [("a", "b")])
    eager, _ = QwenRunner(lm).generate(ids, params)
    static, _ = QwenRunner(lm, static=True).generate(ids, params)
    for gen in (eager[0], static[0]):
        assert gen.text == "xéx" and gen.token_ids == cycle + cycle[:1]
        assert len(gen.logprobs) == 4 and gen.end_logprob is None
