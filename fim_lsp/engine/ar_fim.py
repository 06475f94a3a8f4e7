"""Qwen2.5-Coder's fill-in-the-middle tokens: the prompt layout and the tokens that end a completion.

The generator that runs on these ids is `qwen_runner.QwenRunner`."""
from __future__ import annotations

from .loading import encode, special_id

FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE = "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"
# Any of these ends a completion: the model has left the hole.
STOP_TOKENS = ("<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
               "<|repo_name|>", "<|file_sep|>", "<|im_start|>", "<|im_end|>")


def fim_ids(tokenizer, prefix: str, suffix: str) -> list[int]:
    """`<|fim_prefix|>` P `<|fim_suffix|>` S `<|fim_middle|>`, each segment tokenized on its own."""
    fp, fs, fm = (special_id(tokenizer, t) for t in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE))
    if None in (fp, fs, fm):
        raise ValueError("the autoregressive model's tokenizer has no FIM tokens (<|fim_prefix|> ...)")
    return [fp, *encode(tokenizer, prefix), fs, *encode(tokenizer, suffix), fm]


def stop_ids(tokenizer) -> list[int]:
    return [i for i in (special_id(tokenizer, t) for t in STOP_TOKENS) if i is not None]
