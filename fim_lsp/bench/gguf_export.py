"""A Qwen2 checkpoint (safetensors + tokenizer.json) written as a GGUF file for llama.cpp, f32 or q8_0.

Only what the bench's llama.cpp row needs: the dense Qwen2 architecture (q/k/v biases, tied or untied
output), a byte-level BPE tokenizer. Names and keys follow llama.cpp's own converter
(convert_hf_to_gguf.py, gguf-py's constants): the tensors of one decoder block under `blk.N.`, the
rotary layout unchanged (Qwen2 runs with llama.cpp's NeoX rope, as transformers rotates halves), q8_0
for 2-D weights (the embedding included) with norms and biases kept in f32, tokens typed NORMAL,
CONTROL (special, or written <|...|>), USER_DEFINED (other added tokens) and UNUSED (the padding rows
past the tokenizer, named [PADn]). Needs the `gguf` package: pip install -e '.[llamacpp]'."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

QTYPES = ("f32", "q8_0")
# transformers name inside model.layers.N -> GGUF name inside blk.N
BLOCK = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
       "lm_head.weight": "output.weight"}
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
# the pre-tokenizer regexes llama.cpp knows by name (tokenizer.ggml.pre)
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")


def gguf_name(hf_name: str) -> str:
    """The GGUF tensor name of a transformers Qwen2ForCausalLM parameter."""
    if hf_name in TOP:
        return TOP[hf_name]
    m = _LAYER.fullmatch(hf_name)
    if m is None or m.group(2) not in BLOCK:
        raise ValueError(f"{hf_name}: not a Qwen2 parameter this converter knows")
    return f"blk.{m.group(1)}.{BLOCK[m.group(2)]}"


def pre_tokenizer(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer: "qwen2" (Qwen's Split regex, then byte level)
    or "gpt2" (byte level with GPT-2's own regex)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre])
    kinds = [s.get("type") for s in steps]
    if kinds == ["Split", "ByteLevel"] and steps[0].get("pattern", {}).get("Regex") == QWEN2_SPLIT:
        return "qwen2"
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt2"
    raise ValueError(f"pre-tokenizer {kinds} is neither Qwen2's nor GPT-2's byte-level one")


def _looks_special(token: str) -> bool:
    return token.startswith("<|") and token.endswith("|>")


def vocabulary(tokenizer: Any, rows: int) -> tuple[list[str], list[int]]:
    """(token strings, token types) for every embedding row."""
    from gguf import TokenType

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(rows):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(TokenType.CONTROL if added[i].special or _looks_special(added[i].content)
                         else TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def merges(tokenizer_json: dict[str, Any]) -> list[str]:
    """BPE merges as "left right" strings (tokenizer.json holds pairs or, in older files, strings)."""
    return [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"]["merges"]]


def _tensor_type(name: str, ndim: int, qtype: str) -> str:
    return "q8_0" if qtype == "q8_0" and ndim == 2 and not name.endswith("_norm.weight") else "f32"


def convert(hf_dir: Path, out: Path, qtype: str = "f32") -> Path:
    """Write `out` from the checkpoint in `hf_dir`; returns out."""
    import gguf
    import numpy as np
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    if qtype not in QTYPES:
        raise ValueError(f"qtype {qtype!r}: one of {', '.join(QTYPES)}")
    hf_dir = Path(hf_dir)
    config = AutoConfig.from_pretrained(hf_dir)
    if config.model_type != "qwen2":
        raise ValueError(f"{hf_dir}: model_type {config.model_type!r}, not qwen2")
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    tok_json = json.loads(tokenizer.backend_tokenizer.to_str())
    rope = getattr(config, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(config, "rope_theta", None))

    w = gguf.GGUFWriter(out, arch="qwen2")
    w.add_name(hf_dir.name)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if qtype == "q8_0" else gguf.LlamaFileType.ALL_F32)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_rope_freq_base(float(rope_theta))
    w.add_layer_norm_rms_eps(config.rms_norm_eps)

    tokens, types = vocabulary(tokenizer, config.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre_tokenizer(tok_json))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges(tok_json))
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    w.add_eos_token_id(eos)
    w.add_bos_token_id(eos)  # Qwen has no BOS and never adds one; llama.cpp still wants an id
    w.add_pad_token_id(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    w.add_add_bos_token(False)

    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {hf_dir}")
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for hf_name in f.keys():
                if hf_name == "lm_head.weight" and config.tie_word_embeddings:
                    continue  # llama.cpp reuses token_embd when output.weight is absent
                name = gguf_name(hf_name)
                data = f.get_tensor(hf_name).float().numpy()
                if _tensor_type(name, data.ndim, qtype) == "q8_0":
                    w.add_tensor(name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
                else:
                    w.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def cached(hf_dir: Path, qtype: str, out_dir: Path | None = None) -> Path:
    """The GGUF of hf_dir at qtype, converted once and kept beside the checkpoint (or in out_dir), reused
    while the checkpoint's files are unchanged."""
    hf_dir = Path(hf_dir)
    out_dir = Path(out_dir) if out_dir is not None else hf_dir.parent / "gguf"
    out = out_dir / f"{hf_dir.name}-{qtype}.gguf"
    stamp = out.with_suffix(".json")
    source = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(hf_dir.iterdir()) if p.is_file()}
    if out.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == source:
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    convert(hf_dir, out.with_suffix(".tmp"), qtype).replace(out)
    stamp.write_text(json.dumps(source))
    return out
