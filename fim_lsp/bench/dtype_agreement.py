"""python -m fim_lsp.bench.dtype_agreement: Qwen's greedy tokens and scores in a reduced precision
(a dtype, the int8 decode step, or both) against fp32 with the exact decode step, on the same
checkpoint and prompts (the check a precision default needs).

Each context runs Qwen alone at temperature 0 in both dtypes through the engine (single-line, N tokens)
and compares: whether the tokens are the same, where they first part, the per-token log-probs on the
tokens both wrote, and the perplexity. A random checkpoint's logits are nearly flat, so its near-ties
part the two far more often than a trained model's would: its agreement is a lower bound.

  python -m fim_lsp.bench.dtype_agreement --random-config real --models-dir /tmp/bench-real --contexts 12
  python -m fim_lsp.bench.dtype_agreement --random-config real --models-dir /tmp/bench-real \
      --dtype float32 --decode-weights int8"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .models import ROOT


@dataclass
class Agreement:
    task_id: str
    same_tokens: bool
    first_difference: int | None  # index of the first token that differs; None when none does
    tokens: int
    max_logprob_diff: float  # on the tokens before the first difference
    perplexity_fp32: float
    perplexity_other: float


def compare(fp32: object, other: object, prefix: str, suffix: str, tokens: int, task_id: str) -> Agreement:
    from fim_lsp.engine.requests import FimRequest

    req = FimRequest(prefix, suffix, single_line=True, max_new_tokens=tokens)
    a, b = (e.complete_batch([req])[0].candidates[0] for e in (fp32, other))  # type: ignore[attr-defined]
    ta, tb = a.token_logprobs, b.token_logprobs
    ids_a, ids_b = fp32.ar.tokenizer.encode(a.text), other.ar.tokenizer.encode(b.text)  # type: ignore[attr-defined]
    first = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y),
                 None if len(ids_a) == len(ids_b) else min(len(ids_a), len(ids_b)))
    shared = len(ids_a) if first is None else first
    diff = max((abs(x - y) for x, y in zip(ta[:shared], tb[:shared])), default=0.0)
    return Agreement(task_id, first is None, first, len(ids_a), diff, a.perplexity, b.perplexity)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fim_lsp.bench.dtype_agreement", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ar-model", help="local Qwen2 checkpoint (default: random weights, --random-config)")
    p.add_argument("--random-config", choices=("real", "small"), default="real")
    p.add_argument("--models-dir", type=Path, required=True, help="keep/reuse the random checkpoints here")
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--dtype", default="bfloat16", help="the precision compared with fp32")
    p.add_argument("--decode-weights", default="exact", choices=("exact", "int8"),
                   help="the compared engine's decode step (the fp32 reference's is exact)")
    p.add_argument("--contexts", type=int, default=12)
    p.add_argument("--context-tokens", type=int, default=256)
    p.add_argument("--tokens", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import torch

    from fim_lsp.engine.config import EngineConfig
    from fim_lsp.engine.ensemble import Engine

    from .contexts import make_contexts, read_problems
    from .models import write_random

    torch.set_num_threads(args.threads)
    ar = args.ar_model or str(write_random(args.models_dir, args.random_config, args.data_dir).ar)
    engines = [Engine(EngineConfig(ar_model=ar, models="qwen", device="cpu", dtype=d, temperature=0.0,
                                   decode_weights=w))
               for d, w in (("float32", "exact"), (args.dtype, args.decode_weights))]
    label = f"{args.dtype}, {args.decode_weights} decode"
    for e in engines:
        e.load()
    contexts = make_contexts(read_problems(args.data_dir), engines[0].ar.tokenizer, args.context_tokens,
                             args.contexts)
    rows = [compare(*engines, c.prefix, c.suffix, args.tokens, c.task_id) for c in contexts]
    for r in rows:
        print(f"{r.task_id:<24} same={r.same_tokens!s:<5} first_diff={r.first_difference!s:<5} "
              f"max|dlogp|={r.max_logprob_diff:.4f} ppl fp32 {r.perplexity_fp32:.4g} {label} {r.perplexity_other:.4g}")
    same = sum(r.same_tokens for r in rows)
    ratios = [r.perplexity_other / r.perplexity_fp32 for r in rows if r.same_tokens]
    print(f"\n{label} vs fp32 with the exact decode, greedy, {args.tokens} tokens: same tokens in {same}/{len(rows)} contexts; "
          f"max |log-prob difference| before any parting: {max(r.max_logprob_diff for r in rows):.4f}; "
          f"perplexity ratio where the tokens agree: {min(ratios, default=float('nan')):.4f}-"
          f"{max(ratios, default=float('nan')):.4f}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "rows": [asdict(r) for r in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
