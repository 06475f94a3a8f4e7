"""Tiny random-weight checkpoints in Hugging Face format, for tests and CI.

`python -m fim_lsp.tiny OUTDIR` writes OUTDIR/ar (autoregressive) and OUTDIR/dllm (diffusion, with a
mask token). They load through the same code path as the real models; their output is noise."""
from __future__ import annotations

import argparse
import sys
import sysconfig
from pathlib import Path

# The Qwen2.5 added tokens, in their real order (ids 151643..151664 in the real tokenizer).
QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]
MASK = "<M>"
# Stdlib modules that exist on every CPython 3.10+: enough Python to learn a small code BPE.
CORPUS_MODULES = ["textwrap.py", "string.py", "bisect.py", "heapq.py", "fnmatch.py", "shlex.py",
                  "functools.py", "dataclasses.py", "argparse.py", "difflib.py"]


def _corpus() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [(stdlib / m).read_text(encoding="utf-8") for m in CORPUS_MODULES if (stdlib / m).exists()]
    if not texts:
        raise RuntimeError(f"no stdlib sources under {stdlib} to train the tiny tokenizer on")
    return texts


def build_tokenizer(vocab_size: int = 1024, with_mask: bool = False):
    """A byte-level BPE with the Qwen special tokens, trained on local Python sources."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    # Added after training so that, as in Qwen, special ids come after the BPE vocabulary.
    specials = QWEN_SPECIALS + ([MASK] if with_mask else [])
    kwargs = {"mask_token": MASK} if with_mask else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        additional_special_tokens=specials, clean_up_tokenization_spaces=False,
        model_max_length=32768, **kwargs)


def build_model(vocab_rows: int, seed: int, hidden: int = 64, layers: int = 2):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_rows, hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def write_tiny(outdir: Path, hidden: int = 64, layers: int = 2) -> Path:
    """Write OUTDIR/ar and OUTDIR/dllm. Vocab rows are padded past the tokenizer, as in the real
    models (151936 rows for 151665 tokens), so code must never assume rows == tokens."""
    outdir = Path(outdir)
    for role, seed, with_mask in (("ar", 1, False), ("dllm", 2, True)):
        tokenizer = build_tokenizer(with_mask=with_mask)
        rows = (len(tokenizer) + 63) // 64 * 64 + 64
        model = build_model(rows, seed, hidden, layers)
        eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        model.config.eos_token_id = eos
        model.config.pad_token_id = eos
        model.generation_config.eos_token_id = eos
        model.generation_config.pad_token_id = eos
        model.save_pretrained(outdir / role)
        tokenizer.save_pretrained(outdir / role)
    return outdir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fim_lsp.tiny", description=__doc__)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args(argv)
    out = write_tiny(args.outdir, args.hidden, args.layers)
    print(f"wrote {out / 'ar'} and {out / 'dllm'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
