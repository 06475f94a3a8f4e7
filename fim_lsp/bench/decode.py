"""python -m fim_lsp.bench.decode: Qwen's decode time per token on each path, in one run.

  eager     Qwen's runner in eager mode: its static-shape step, uncaptured, over the slots it needs
            (compile off: the CPU default)
  graphs    the runner in static mode, each decode step replayed as one CUDA graph (compile on: the GPU default)
  compiled  the same static step under torch.compile(mode="reduce-overhead"), which fuses kernels too

  python -m fim_lsp.bench.decode --random-config real --device cuda --tokens 128"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .models import ROOT


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fim_lsp.bench.decode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ar-model", help="local dir or Hub id (default: random weights, --random-config)")
    p.add_argument("--random-config", choices=("real", "small"), default="real")
    p.add_argument("--models-dir", type=Path, help="keep/reuse the random checkpoints here")
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--context-tokens", type=int, default=256)
    p.add_argument("--tokens", type=int, default=128, help="tokens decoded per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--paths", default="eager,graphs,compiled")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import tempfile

    import torch

    from fim_lsp.engine.ar_fim import fim_ids, stop_ids
    from fim_lsp.engine.loading import load_model, resolve_device, resolve_dtype
    from fim_lsp.engine.qwen_runner import QwenRunner
    from fim_lsp.engine.requests import ArParams, RowLimits
    from fim_lsp.percentile import percentile

    from .models import write_random

    args = parse_args(argv)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="fim-decode-") as tmp:
        path = args.ar_model or str(write_random(args.models_dir or Path(tmp), args.random_config,
                                                 args.data_dir if args.data_dir.is_dir() else None).ar)
        lm = load_model(path, "ar", device, resolve_dtype(args.dtype, device))
    # A random network may pick a stop token at once (tied embeddings echo the last input, <|fim_middle|>);
    # with those rows at zero every run decodes its full length. Timing only: the text is noise anyway.
    with torch.no_grad():
        lm.model.get_output_embeddings().weight[stop_ids(lm.tokenizer)] = 0
    line = "    total = total + values[index] * weight\n"
    per_line = len(lm.tokenizer(line, add_special_tokens=False)["input_ids"])
    text = line * max(1, args.context_tokens // per_line)
    request = [fim_ids(lm.tokenizer, text[: len(text) * 3 // 4], text[len(text) * 3 // 4:])]
    params = ArParams(temperature=0.0, max_new_tokens=args.tokens)
    budget = RowLimits([args.tokens], [False])
    # each returns the generations of one completion; keep=False: every run's prompt pass is whole
    runners = {
        "eager": lambda g=QwenRunner(lm): g.generate(request, params, limits=budget, keep=False)[0],
        "graphs": lambda g=QwenRunner(lm, static=True): g.generate(request, params, keep=False)[0],
        "compiled": lambda g=QwenRunner(lm, static=True, decode_compile="reduce-overhead"):
            g.generate(request, params, keep=False)[0],
    }
    rows = []
    first_tokens = None
    for name in args.paths.split(","):
        run = runners[name]
        t = time.perf_counter()
        run()  # the first call captures or compiles
        warm = time.perf_counter() - t
        per_token = []
        for _ in range(args.repeats):
            gen = run()[0]
            per_token.append((gen.seconds - gen.prefill_seconds) / max(1, gen.forward_passes - 1) * 1000)
        first_tokens = first_tokens or gen.token_ids
        rows.append((name, percentile(per_token, 0.5), gen.prefill_seconds * 1000, warm, gen.forward_passes,
                     gen.token_ids == first_tokens))
        print(f"{name}: decode {rows[-1][1]:.2f} ms/token, prompt pass {rows[-1][2]:.1f} ms, first call "
              f"{warm:.1f} s", file=sys.stderr, flush=True)
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    print(f"\nQwen decode on {gpu}, {lm.dtype}, {args.context_tokens}-token context, {args.tokens} tokens, "
          f"median of {args.repeats}")
    print(f"{'path':<10}{'ms/token':>10}{'prompt ms':>11}{'first call s':>14}{'passes':>8}{'same as 1st':>13}")
    for name, ms, prefill, warm, passes, same in rows:
        print(f"{name:<10}{ms:>10.2f}{prefill:>11.1f}{warm:>14.1f}{passes:>8}{str(same):>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
