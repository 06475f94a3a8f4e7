"""FIM prompt, scorer and selection on tiny checkpoints; loading errors; the one-shot CLI."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fim_lsp.engine.ar_fim import fim_ids
from fim_lsp.engine.config import EngineConfig
from fim_lsp.engine.ensemble import Engine, FimRequest
from fim_lsp.engine.loading import ModelLoadError, encode, load_model, mask_token_id
from fim_lsp.engine.qwen_runner import QwenRunner
from fim_lsp.engine.requests import ArParams
from fim_lsp.engine.results import Cancelled, Completion
from fim_lsp.engine.scorer import ScoreItem, build, score_batch
from forced import forced_lm, token

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
PREFIX = "def area(w, h):\n    return "
SUFFIX = "\n\nprint(area(2, 3))\n"


@pytest.fixture(scope="module")
def ar(tiny_models):
    return load_model(str(tiny_models / "ar"), "ar", CPU, torch.float32)


def tiny_config(tiny_models: Path, **kw) -> EngineConfig:
    base = dict(ar_model=str(tiny_models / "ar"), dllm_model=str(tiny_models / "dllm"), device="cpu",
                max_new_tokens=8, steps=6, dllm_lengths=(4, 8))
    base.update(kw)
    return EngineConfig(**base)


def test_fim_prompt_ids_are_exact(ar):
    tok = ar.tokenizer
    ids = fim_ids(tok, PREFIX, SUFFIX)
    v = tok.get_vocab()
    expected = ([v["<|fim_prefix|>"]] + tok(PREFIX, add_special_tokens=False)["input_ids"]
                + [v["<|fim_suffix|>"]] + tok(SUFFIX, add_special_tokens=False)["input_ids"]
                + [v["<|fim_middle|>"]])
    assert ids == expected
    # a special-token string typed in user code stays text, it never becomes the control token
    assert v["<|endoftext|>"] not in fim_ids(tok, "s = '<|endoftext|>'\n", "")


# Every token after which Qwen has left the hole (README "How a completion is made"), written out
# here rather than imported, so that dropping one from the engine's list turns a test red.
STOP_TOKENS = ("<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
               "<|repo_name|>", "<|file_sep|>", "<|im_start|>", "<|im_end|>")


def generate_on(path: str, lm, params: ArParams):
    """One completion of (PREFIX, SUFFIX) on the eager path or the static one (uncompiled on CPU)."""
    gen = torch.Generator().manual_seed(0)
    runner = QwenRunner(lm, static=path == "static")
    return runner.generate([fim_ids(lm.tokenizer, PREFIX, SUFFIX)], params, gen)[0][0]


@pytest.mark.parametrize("path", ["eager", "static"])
@pytest.mark.parametrize("stop", STOP_TOKENS)
def test_every_stop_token_ends_the_generation(ar, stop, path):
    """A forced model writes "x y STOP z z ...": generation ends at STOP, which is not part of the
    completion, and the end of the hole is scored (end_logprob)."""
    tok = ar.tokenizer
    fm = tok.convert_tokens_to_ids("<|fim_middle|>")
    x, y, z = (token(tok, c) for c in "xyz")
    s = tok.convert_tokens_to_ids(stop)
    table = {fm: x, x: y, y: s}
    table.setdefault(s, z)
    lm = forced_lm(tok, table, default=z)
    out = generate_on(path, lm, ArParams(temperature=0.6, max_new_tokens=8))
    assert out.token_ids == [x, y] and out.text == "xy"
    assert out.forward_passes == 3 and len(out.logprobs) == 2 and out.end_logprob is not None


@pytest.mark.parametrize("path", ["eager", "static"])
def test_generation_respects_max_new_tokens(ar, path):
    tok = ar.tokenizer
    x = token(tok, "x")
    lm = forced_lm(tok, {}, default=x)  # never a stop token
    out = generate_on(path, lm, ArParams(temperature=0.0, max_new_tokens=5))
    assert out.token_ids == [x] * 5 and out.forward_passes == 5
    assert len(out.logprobs) == 5 and out.end_logprob is None  # the hole did not end: nothing to score


def test_generation_batch_equals_single_and_cancel_stops(ar):
    params = ArParams(temperature=0.0, max_new_tokens=6)
    reqs = [fim_ids(ar.tokenizer, PREFIX, SUFFIX), fim_ids(ar.tokenizer, "import os\n", "")]
    runner = QwenRunner(ar)
    both, _ = runner.generate(reqs, params)
    for req, out in zip(reqs, both):
        assert QwenRunner(ar).generate([req], params)[0][0].token_ids == out.token_ids
    with pytest.raises(Cancelled):
        runner.generate(reqs, ArParams(max_new_tokens=50), cancel=lambda: True)


def direct_logprobs(lm, ids: list[int]) -> torch.Tensor:
    """log P(token_i | tokens_<i) straight from transformers, one unpadded sequence."""
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)


@pytest.mark.parametrize("mode", ["fim", "plain"])
def test_scorer_equals_direct_transformers(ar, mode):
    tok = ar.tokenizer
    comp = "w * h"
    if mode == "fim":
        v = tok.get_vocab()
        ids = ([v["<|fim_prefix|>"]] + encode(tok, PREFIX) + [v["<|fim_suffix|>"]] + encode(tok, SUFFIX)
               + [v["<|fim_middle|>"]] + encode(tok, comp) + [v["<|endoftext|>"]])
        n = len(encode(tok, comp)) + 1
    else:
        ids = encode(tok, PREFIX) + encode(tok, comp) + encode(tok, SUFFIX)
        n = len(encode(tok, comp))
        start = len(encode(tok, PREFIX))
    lp = direct_logprobs(ar, ids)
    expected = lp[-n:] if mode == "fim" else lp[start - 1: start - 1 + n]
    score = score_batch(ar, [ScoreItem(PREFIX, SUFFIX, comp)], mode)[0]
    assert score.tokens == n
    assert torch.allclose(torch.tensor(score.token_logprobs), expected, atol=1e-5)
    assert math.isclose(score.perplexity, math.exp(-float(expected.mean())), rel_tol=1e-5)


def test_scorer_batched_equals_unbatched_and_modes_differ(ar):
    items = [ScoreItem(PREFIX, SUFFIX, "w * h"), ScoreItem("x = ", "", "1"),
             ScoreItem(PREFIX, "\n", "w * h + 0  # a longer completion"), ScoreItem(PREFIX, SUFFIX, "")]
    batched = score_batch(ar, items, "fim")
    for item, b in zip(items, batched):
        single = score_batch(ar, [item], "fim")[0]
        assert math.isclose(b.perplexity, single.perplexity, rel_tol=1e-5)
    # fim conditions on the suffix, plain does not: a different suffix moves only fim's score
    a = ScoreItem(PREFIX, SUFFIX, "w * h")
    b = ScoreItem(PREFIX, "\nraise SystemExit\n", "w * h")
    fa, fb = score_batch(ar, [a, b], "fim")
    pa, pb = score_batch(ar, [a, b], "plain")
    assert not math.isclose(fa.perplexity, fb.perplexity, rel_tol=1e-6)
    assert pa.tokens == pb.tokens and math.isclose(pa.token_logprobs[0], pb.token_logprobs[0], rel_tol=1e-5)
    assert fa.perplexity != pa.perplexity


def test_empty_completion_scores(ar):
    fim, plain = (score_batch(ar, [ScoreItem(PREFIX, SUFFIX, "")], m)[0] for m in ("fim", "plain"))
    assert fim.tokens == 1 and math.isfinite(fim.perplexity)  # the end token alone
    assert plain.tokens == 0 and plain.perplexity == math.inf  # nothing to score: never wins


def test_real_tokenizer_boundary_merges_keep_the_exact_span(shared_data):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(shared_data / "tokenizers" / "qwen2.5-coder")
    prefix, comp, suffix = "result = compute_tot", "al_value", "s(items)\n"
    joined = tok(prefix + comp + suffix, add_special_tokens=False)["input_ids"]
    parts = [tok(t, add_special_tokens=False)["input_ids"] for t in (prefix, comp, suffix)]
    assert joined != parts[0] + parts[1] + parts[2], "the example must merge across a boundary"
    for mode in ("fim", "plain"):
        ids, lo, hi = build(tok, ScoreItem(prefix, suffix, comp), mode)
        span = ids[lo:hi]
        expected = parts[1] + ([tok.convert_tokens_to_ids("<|endoftext|>")] if mode == "fim" else [])
        assert span == expected
        assert tok.decode(parts[1]) == comp


def test_selection_picks_the_argmin_and_is_seeded(tiny_models):
    engine = Engine(tiny_config(tiny_models, temperature=0.8, seed=5))
    first = engine.complete(PREFIX, SUFFIX)
    assert {c.model for c in first.candidates} == {"qwen", "dllm"}
    assert len(first.candidates) == 3  # qwen + one per diffusion length
    best = min(c.perplexity for c in first.candidates)
    assert first.winner.perplexity == best
    again = engine.complete(PREFIX, SUFFIX)
    assert [c.text for c in again.candidates] == [c.text for c in first.candidates]
    other = Engine(tiny_config(tiny_models, temperature=0.8, seed=6)).complete(PREFIX, SUFFIX)
    assert [c.text for c in other.candidates] != [c.text for c in first.candidates]


def test_batch_with_oracle_lengths(tiny_models):
    engine = Engine(tiny_config(tiny_models, temperature=0.0))
    reqs = [FimRequest(PREFIX, SUFFIX, dllm_length=3), FimRequest("x = ", "\n", dllm_length=5)]
    out = engine.complete_batch(reqs)
    assert [[c.hole_length for c in o.candidates if c.model == "dllm"] for o in out] == [[3], [5]]
    assert all(isinstance(o, Completion) and o.winner for o in out)
    assert engine.ar is engine.scorer  # the scorer shares the autoregressive model


def test_one_model_missing_serves_the_other(tiny_models):
    notes = []
    engine = Engine(tiny_config(tiny_models, dllm_model=str(tiny_models / "nope")), notify=notes.append)
    engine.load()
    assert engine.available == ["qwen"]
    assert len(notes) == 1 and "nope" in notes[0] and "dllm" in notes[0]
    out = engine.complete(PREFIX, SUFFIX)
    assert [c.model for c in out.candidates] == ["qwen"]


def test_missing_mask_token_is_a_clear_error(tiny_models):
    ar = load_model(str(tiny_models / "ar"), "ar", CPU, torch.float32)
    with pytest.raises(ModelLoadError, match="--mask-token"):
        mask_token_id(ar.tokenizer, None, "my-model")
    # an override that names a real token resolves
    assert mask_token_id(ar.tokenizer, "<|fim_pad|>") == ar.tokenizer.convert_tokens_to_ids("<|fim_pad|>")


def run_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "fim_lsp", "complete", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)


def test_cli_json_on_tiny(tiny_models, tmp_path):
    src = tmp_path / "a.py"
    src.write_text("def area(w, h):\n    return \n", encoding="utf-8")
    res = run_cli("--file", str(src), "--line", "1", "--col", "11", "--ar-model", str(tiny_models / "ar"),
                  "--dllm-model", str(tiny_models / "dllm"), "--device", "cpu", "--steps", "4",
                  "--max-new-tokens", "6", "--dllm-lengths", "4", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["winner"] in ("qwen", "dllm") and isinstance(out["completion"], str)
    assert {c["model"] for c in out["candidates"]} == {"qwen", "dllm"}
    for c in out["candidates"]:
        assert {"model", "text", "perplexity", "tokens", "seconds", "forward_passes"} <= set(c)
    assert {"qwen", "dllm", "score", "total"} <= set(out["timings"])


def test_cli_missing_model_names_it_and_the_fix(tmp_path):
    (tmp_path / "p.txt").write_text("x = ")
    res = run_cli("--prefix-file", str(tmp_path / "p.txt"), "--models", "qwen",
                  "--ar-model", "nobody/no-such-coder", "--device", "cpu")
    assert res.returncode == 2
    assert "nobody/no-such-coder" in res.stderr and "hf download nobody/no-such-coder" in res.stderr
    assert "Traceback" not in res.stderr


def test_cli_on_a_checkpoint_the_project_did_not_make(shared_data, tmp_path):
    """Qwen2 checkpoints of another shape, built with plain transformers around the real Qwen2.5
    tokenizer (and the Open-dCoder tokenizer with its <M> mask): the CLI runs them unchanged."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    for role, tok_dir in (("ar", "qwen2.5-coder"), ("dllm", "open-dcoder-0.5B-assumed")):
        tok = AutoTokenizer.from_pretrained(shared_data / "tokenizers" / tok_dir)
        cfg = Qwen2Config(vocab_size=151936, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
        torch.manual_seed(0)
        Qwen2ForCausalLM(cfg).save_pretrained(tmp_path / role)
        tok.save_pretrained(tmp_path / role)
    (tmp_path / "p.txt").write_text(PREFIX)
    (tmp_path / "s.txt").write_text(SUFFIX)
    res = run_cli("--prefix-file", str(tmp_path / "p.txt"), "--suffix-file", str(tmp_path / "s.txt"),
                  "--ar-model", str(tmp_path / "ar"), "--dllm-model", str(tmp_path / "dllm"), "--device", "cpu",
                  "--steps", "3", "--max-new-tokens", "4", "--dllm-length", "3", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert [c["model"] for c in out["candidates"]] == ["qwen", "dllm"]
    assert out["candidates"][1]["hole_length"] == 3


def test_cached_hub_model_loads_with_no_network(tiny_models, tmp_path):
    """A Hub id already in the HF cache loads without asking the Hub: no retries against a dead
    link, even with offline mode off (this machine has no route to the Hub)."""
    import shutil

    snap = tmp_path / "hub" / "models--fim-lsp-test--tiny-ar" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_models / "ar", snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0" * 40)
    (tmp_path / "p.txt").write_text(PREFIX)
    res = run_cli("--prefix-file", str(tmp_path / "p.txt"), "--models", "qwen", "--ar-model",
                  "fim-lsp-test/tiny-ar", "--device", "cpu", "--max-new-tokens", "3", "--json",
                  env_extra={"HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert res.returncode == 0, res.stderr
    assert "requesting" not in res.stderr and "Retrying" not in res.stderr
    assert json.loads(res.stdout)["candidates"][0]["model"] == "qwen"
