"""A Qwen2 checkpoint whose greedy output is known in advance, for tests that must not depend on what a
random model happens to write.

Every layer's output projections are zeroed, so the last hidden state is the input token's embedding.
Those embeddings are one-hot for the tokens of a cycle (`<|fim_middle|>` -> t0 -> t1 -> ... -> t0), and
the untied output head maps each one-hot to its successor with a large logit, every other logit 0. So
after any FIM prompt the model writes the cycle's text over and over, whatever the prefix and suffix."""
from __future__ import annotations

from pathlib import Path

import torch

from fim_lsp.engine.loading import encode, load_model, special_id


def write_forced(tiny_ar: Path, outdir: Path, line: str = "x = 1\n") -> list[int]:
    """Write a forced copy of the tiny autoregressive checkpoint to `outdir`; return the cycle's ids
    (the ids of `line`, which must all differ)."""
    lm = load_model(str(tiny_ar), "ar", torch.device("cpu"), torch.float32)
    model, tok = lm.model, lm.tokenizer
    cycle = encode(tok, line)
    assert len(set(cycle)) == len(cycle), f"{line!r} repeats a token: the successor would be ambiguous"
    trigger = special_id(tok, "<|fim_middle|>")
    hidden = model.config.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        head = torch.zeros(model.config.vocab_size, hidden)
        inputs = [trigger, *cycle]
        for k, tid in enumerate(inputs):
            emb[tid] = 0.0
            emb[tid, k] = 1.0
            head[cycle[k % len(cycle)], k] = 10.0  # input k is followed by cycle[k]; the last wraps to t0
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(head)
    model.save_pretrained(outdir)
    tok.save_pretrained(outdir)
    return cycle
