"""Random-weight checkpoints for the bench: the real 0.5B Qwen2 shape, or a small one.

No real weights reach the machines this runs on, but latency depends on the shape, not on the values:
a random network at the published shape costs the same FLOPs and bytes per forward as the real one.
The checkpoints are written with `save_pretrained` and loaded back through the engine's normal path,
so the bench measures what the server runs."""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# ../shared/data/tokenizers/<name>: the real Qwen2.5 tokenizer, and the one assumed for Open-dCoder
# (the same plus the mask token <M> at id 151665).
AR_TOKENIZER = "qwen2.5-coder"
DLLM_TOKENIZER = "open-dcoder-0.5B-assumed"


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab_rows: int


SHAPES: dict[str, Shape] = {
    # REFERENCE.md section 1: both models are this Qwen2 network (~494M parameters).
    "real": Shape(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vocab_rows=151936),
    # Small enough for tests; the real vocabulary is kept when the real tokenizer is used, because the
    # 151936-way head is a large share of a short forward's cost.
    "small": Shape(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab_rows=151936),
}


@dataclass
class Checkpoints:
    ar: Path
    dllm: Path
    shape: str
    tokenizer: str  # "qwen2.5 (data dir)" or "tiny BPE"


def _tokenizers(data_dir: Path | None) -> tuple[Any, Any, str]:
    """(ar tokenizer, dllm tokenizer, description): the real ones from data_dir when present."""
    from transformers import AutoTokenizer

    if data_dir is not None:
        ar_dir, dllm_dir = data_dir / "tokenizers" / AR_TOKENIZER, data_dir / "tokenizers" / DLLM_TOKENIZER
        if (ar_dir / "tokenizer.json").is_file() and (dllm_dir / "tokenizer.json").is_file():
            return (AutoTokenizer.from_pretrained(str(ar_dir)), AutoTokenizer.from_pretrained(str(dllm_dir)),
                    f"qwen2.5 ({AR_TOKENIZER}, {DLLM_TOKENIZER} from the data dir)")
    from fim_lsp.tiny import build_tokenizer

    return build_tokenizer(with_mask=False), build_tokenizer(with_mask=True), "tiny BPE (fim_lsp.tiny)"


def random_model(shape: Shape, rows: int, seed: int, eos: int) -> Any:
    """A Qwen2ForCausalLM of this shape with random weights (in memory)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=rows, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=eos, pad_token_id=eos)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = eos
    return model


def write_random(outdir: Path, shape_name: str, data_dir: Path | None) -> Checkpoints:
    """Write outdir/ar and outdir/dllm. An outdir already holding the same shape and tokenizer is
    reused: a real-shape pair is ~4 GB and takes a while to initialise on a small CPU."""
    import torch

    shape = SHAPES[shape_name]
    outdir = Path(outdir)
    marker = outdir / "bench-shape.json"
    ar_tok, dllm_tok, tok_desc = _tokenizers(data_dir)
    want = {"shape": asdict(shape), "tokenizer": tok_desc, "stop_rows": "zeroed"}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return Checkpoints(outdir / "ar", outdir / "dllm", shape_name, tok_desc)
    for role, tok, seed in (("ar", ar_tok, 1), ("dllm", dllm_tok, 2)):
        # Real checkpoints pad the vocabulary rows past the tokenizer (151936 rows, 151665 tokens).
        rows = max(shape.vocab_rows, (len(tok) + 63) // 64 * 64)
        model = random_model(shape, rows, seed, tok.convert_tokens_to_ids("<|endoftext|>"))
        if role == "ar":
            # A random network can echo its last input (tied embeddings): after <|fim_middle|> that is a stop
            # token, and a completion of no tokens would time nothing. Zero rows: Qwen never stops by itself,
            # and the bench decides where it stops (the server variant's simulated stop).
            from fim_lsp.engine.ar_fim import stop_ids

            with torch.no_grad():
                model.get_output_embeddings().weight[stop_ids(tok)] = 0
        model.save_pretrained(outdir / role)
        tok.save_pretrained(outdir / role)
        del model
    marker.write_text(json.dumps(want))
    return Checkpoints(outdir / "ar", outdir / "dllm", shape_name, tok_desc)


def resolve_checkpoints(random_config: str | None, ar_model: str | None, dllm_model: str | None,
                        models_dir: Path | None, data_dir: Path, tmp: Path) -> tuple[str, str, dict[str, Any]]:
    """(ar, dllm, what they are): the given models, or random ones of `random_config`'s shape written to
    `models_dir` (reused when it already holds them), else to `tmp`."""
    if random_config is None:
        assert ar_model and dllm_model
        return ar_model, dllm_model, {"models": "given"}
    t = time.perf_counter()
    ck = write_random(models_dir or tmp, random_config, data_dir if data_dir.is_dir() else None)
    print(f"random {ck.shape} checkpoints in {ck.ar.parent} ({time.perf_counter() - t:.0f} s), "
          f"tokenizer: {ck.tokenizer}", file=sys.stderr)
    return str(ck.ar), str(ck.dllm), {"models": f"random {ck.shape}", "shape": SHAPES[ck.shape].__dict__,
                                      "tokenizer": ck.tokenizer}


def add_model_args(parser: argparse.ArgumentParser, default: str = "") -> None:
    """The options `resolve_checkpoints` takes: model paths, or random weights at a shape; and --data-dir."""
    m = parser.add_argument_group(f"models (paths, or random weights at a given shape{default})")
    m.add_argument("--ar-model", help="local dir or Hub id of the autoregressive model")
    m.add_argument("--dllm-model", help="local dir or Hub id of the diffusion model")
    m.add_argument("--random-config", choices=("real", "small"),
                   help="random weights: real = the 0.5B Qwen2 shape of both models; small = a tiny network")
    m.add_argument("--models-dir", type=Path,
                   help="keep the random checkpoints here and reuse them next time (default: a temp dir)")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data",
                        help="folder laid out like shared/data (HumanEval-Infilling, the real tokenizers)")
