"""Test helper: a real Qwen2 checkpoint whose output is forced, so tests never hang on what a
random-weight model happens to write.

Every layer's output projections are zero, so the residual stream is the token's embedding and the
logits at a position depend on that position's token alone: the model is a bigram table. Token t's
embedding is a one-hot in its own slot; the head maps that slot to its target with logit FORCE (the
target then has probability ~1 - V*exp(-FORCE), even at temperature 0.6 and top-p 0.95). Tokens listed
as `uniform` get a zero embedding: all logits equal, confidence 1/V (what a diffusion mask should look
like, so p2 re-masks it first). It runs through stock transformers like any checkpoint: the forward
passes, the KV cache and the 4-D masks are real."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from fim_lsp.engine.loading import LoadedModel, encode

FORCE = 30.0


def token(tokenizer, text: str) -> int:
    """The id of a text that is one token on its own."""
    ids = encode(tokenizer, text)
    assert len(ids) == 1, f"{text!r} is not one token: {ids}"
    return ids[0]


def bigram_model(tokenizer, table: dict[int, int], default: int, uniform: tuple[int, ...] = (), width: int = 8):
    """A Qwen2ForCausalLM in which token a predicts table[a] (else `default`), and `uniform` tokens
    predict every token equally; its hidden size at least `width` (the int8 decode kernel takes widths
    that are multiples of 16 only)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    vocab = len(tokenizer)
    rows = (vocab + 63) // 64 * 64 + 64  # padded past the tokenizer, as the real checkpoints
    hidden = 1 + len(table)
    hidden += -hidden % 4  # a multiple of the head count
    cfg = Qwen2Config(vocab_size=rows, hidden_size=max(hidden, width), intermediate_size=8, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                      max_position_embeddings=4096, rms_norm_eps=1e-6)
    model = Qwen2ForCausalLM(cfg).eval()
    h = cfg.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        emb = model.model.embed_tokens.weight
        head = model.lm_head.weight
        emb.zero_()
        head.zero_()
        emb[:vocab, 0] = 1.0  # slot 0: the default row
        head[default, 0] = FORCE / math.sqrt(h)  # RMSNorm scales a unit one-hot to sqrt(h)
        for slot, (src, dst) in enumerate(table.items(), start=1):
            emb[src].zero_()
            emb[src, slot] = 1.0
            head[dst, slot] = FORCE / math.sqrt(h)
        for u in uniform:
            emb[u].zero_()
    return model


def forced_lm(tokenizer, table: dict[int, int], default: int, uniform: tuple[int, ...] = ()) -> LoadedModel:
    return LoadedModel(name="forced", model=bigram_model(tokenizer, table, default, uniform), tokenizer=tokenizer,
                       device=torch.device("cpu"), dtype=torch.float32)


def write_forced_pair(tiny: Path, out: Path, rule: str = "lines", width: int = 8) -> Path:
    """OUT/ar and OUT/dllm with the tiny checkpoints' tokenizers and forced weights; the diffusion
    mask predicts nothing in particular.
    - "lines": the cycle "x", "=", "1", newline (any other token is followed by "x"); both models
      write "x=1\\nx=1\\n..." (multi-line, never blank), whatever the document.
    - "end": after any token comes <|endoftext|>; every completion is empty."""
    from transformers import AutoTokenizer

    for role in ("ar", "dllm"):
        tok = AutoTokenizer.from_pretrained(tiny / role)
        eos = tok.convert_tokens_to_ids("<|endoftext|>")
        x, eq, one, nl = (token(tok, c) for c in "x=1\n")
        table, default = ({x: eq, eq: one, one: nl}, x) if rule == "lines" else ({}, eos)
        uniform = (tok.convert_tokens_to_ids(tok.mask_token),) if role == "dllm" else ()
        model = bigram_model(tok, table, default, uniform, width)
        model.config.eos_token_id = model.config.pad_token_id = eos
        model.save_pretrained(out / role)
        tok.save_pretrained(out / role)
    return out


def write_forced(tiny_ar: Path, out: Path, line: str = "x = 1\n") -> list[int]:
    """OUT: an autoregressive checkpoint (the tiny one's tokenizer) that writes `line` over and over
    after any FIM prompt: <|fim_middle|> and every other token are followed by the line's first token,
    each of its tokens by the next. Returns the line's ids (they must all differ)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_ar)
    cycle = encode(tok, line)
    assert len(set(cycle)) == len(cycle), f"{line!r} repeats a token: the successor would be ambiguous"
    table = {a: b for a, b in zip(cycle, cycle[1:])}
    model = bigram_model(tok, table, default=cycle[0])
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    model.config.eos_token_id = model.config.pad_token_id = eos
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return cycle
