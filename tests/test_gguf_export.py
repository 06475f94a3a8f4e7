"""The bench's GGUF conversion (fim_lsp/bench/gguf_export.py) checked by llama.cpp itself: the logits it
computes from the converted random checkpoint against transformers', and its tokenizer against the
Hugging Face one. Those tests run only where llama-cpp-python is installed (the optional extra, which
builds llama.cpp: pip install -e '.[llamacpp]'); the name map and the pre-tokenizer rule run everywhere."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fim_lsp.bench.gguf_export import BLOCK, gguf_name, pre_tokenizer

INSTALL = "llama-cpp-python is not installed: pip install -e '.[llamacpp]' (builds llama.cpp)"
TEXTS = ["def add(a, b):\n    return a + b  # 123 4567\n", "  \t\n\n    x = 'ünïcödé' != \"中文\"\r\n",
         "if (x>=10) { y += 0x1F; }  // done..."]


def _llama():
    return pytest.importorskip("llama_cpp", reason=INSTALL)


def test_every_qwen2_parameter_has_one_gguf_name(tiny_models: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models / "ar")
    names = [gguf_name(n) for n, _ in model.named_parameters()] + [gguf_name("lm_head.weight")]
    assert len(set(names)) == len(names)
    assert len([n for n in names if n.startswith("blk.1.")]) == len(BLOCK)
    assert {"token_embd.weight", "output_norm.weight", "output.weight", "blk.0.attn_q.bias"} <= set(names)
    with pytest.raises(ValueError, match="not a Qwen2 parameter"):
        gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq")


def test_pre_tokenizer_is_named_from_the_tokenizer_itself(tiny_models: Path, shared_data: Path):
    import json

    from transformers import AutoTokenizer

    def pre(path: Path) -> str:
        return pre_tokenizer(json.loads(AutoTokenizer.from_pretrained(path).backend_tokenizer.to_str()))

    assert pre(shared_data / "tokenizers" / "qwen2.5-coder") == "qwen2"
    # transformers loads the tiny BPE as a Qwen2Tokenizer, with Qwen's split: llama.cpp must split alike
    assert pre(tiny_models / "ar") == "qwen2"
    assert pre_tokenizer(json.loads((tiny_models / "ar" / "tokenizer.json").read_text())) == "gpt2"
    with pytest.raises(ValueError, match="neither"):
        pre_tokenizer({"pre_tokenizer": {"type": "Whitespace"}})


def _hf_logits(path: Path, ids: list[int]):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def test_llama_cpp_logits_match_transformers(tiny_models: Path, tmp_path: Path):
    """f32: the same numbers within float rounding; q8_0: within its 8-bit weights' error."""
    import numpy as np
    from transformers import AutoTokenizer

    _llama()
    from fim_lsp.bench import gguf_export, llamacpp

    ar = tiny_models / "ar"
    tok = AutoTokenizer.from_pretrained(ar)
    ids = tok("<|fim_prefix|>" + TEXTS[0] + "<|fim_suffix|>\n<|fim_middle|>", add_special_tokens=False)["input_ids"]
    want = _hf_logits(ar, ids)
    got = llamacpp.logits(gguf_export.convert(ar, tmp_path / "f32.gguf", "f32"), ids)
    assert got.shape == want.shape  # every row, the padding rows past the tokenizer included
    assert np.abs(got - want).max() < 1e-4 * max(1.0, float(np.abs(want).max()))
    q8 = llamacpp.logits(gguf_export.convert(ar, tmp_path / "q8.gguf", "q8_0"), ids)
    assert np.abs(q8 - want).max() < 0.1 * float(want.std())
    assert (tmp_path / "q8.gguf").stat().st_size < 0.5 * (tmp_path / "f32.gguf").stat().st_size


@pytest.mark.parametrize("which", ["tiny", "qwen2.5-coder"])
def test_llama_cpp_tokenizes_as_hugging_face(which: str, tiny_models: Path, tmp_path: Path, request):
    """The tokenizer metadata: merges, token types and the pre-tokenizer; the real Qwen tokenizer on a
    small network with its 151936 rows."""
    from transformers import AutoTokenizer

    llama_cpp = _llama()
    from fim_lsp.bench import gguf_export
    from fim_lsp.tiny import build_model

    if which == "tiny":
        src = tiny_models / "ar"
    else:
        shared = request.getfixturevalue("shared_data")
        src = tmp_path / "qwen"
        build_model(151936, seed=3, hidden=32, layers=1).save_pretrained(src)
        AutoTokenizer.from_pretrained(shared / "tokenizers" / which).save_pretrained(src)
    tok = AutoTokenizer.from_pretrained(src)
    llm = llama_cpp.Llama(model_path=str(gguf_export.convert(src, tmp_path / "v.gguf", "f32")), vocab_only=True,
                          verbose=False)
    try:
        for text in TEXTS:
            assert llm.tokenize(text.encode(), add_bos=False, special=False) == \
                tok(text, add_special_tokens=False)["input_ids"]
        fim = "<|fim_prefix|>x<|fim_suffix|>y<|fim_middle|>"
        assert llm.tokenize(fim.encode(), add_bos=False, special=True) == tok(fim, add_special_tokens=False)["input_ids"]
        assert llm.token_eos() == tok.convert_tokens_to_ids("<|endoftext|>")
    finally:
        llm.close()


def test_converted_files_are_reused_until_the_checkpoint_changes(tiny_models: Path, tmp_path: Path):
    pytest.importorskip("gguf", reason=INSTALL)
    import shutil

    from fim_lsp.bench.gguf_export import cached

    src = tmp_path / "ar"
    shutil.copytree(tiny_models / "ar", src)
    first = cached(src, "f32")
    stamp = first.stat().st_mtime_ns
    assert cached(src, "f32") == first and first.stat().st_mtime_ns == stamp
    (src / "config.json").write_text((src / "config.json").read_text() + "\n")
    assert cached(src, "f32").stat().st_mtime_ns != stamp
