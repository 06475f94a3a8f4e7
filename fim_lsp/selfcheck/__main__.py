"""python -m fim_lsp.selfcheck: the engine checks itself on this machine's device, results not speed.

    python -m fim_lsp.selfcheck --device cpu                       # tiny checkpoints built on the spot
    python -m fim_lsp.selfcheck --device cuda --random-config real # random weights at the real shape
    python -m fim_lsp.selfcheck --ar-model DIR --dllm-model DIR

In fp32 at temperature 0 it compares the static path (CUDA graphs, overlapped stages) with the eager path
and both with transformers' own generate and scorer; then the graphed DualCache, reloads, shapes first
met at request time by both stages at once, a cancel, a memory cap and a second GPU. Checks that need
CUDA (or two GPUs) are reported as skipped. Exit status 0 when no check failed.

Random weights (the tiny checkpoints, --random-config) get Qwen's stop tokens' output rows zeroed, as
the bench does, so that Qwen decodes its whole budget and every step has something to compare."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fim_lsp.selfcheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--ar-model", help="a local Qwen2.5-Coder checkpoint (with --dllm-model)")
    p.add_argument("--dllm-model", help="a local Open-dCoder checkpoint (with --ar-model)")
    p.add_argument("--random-config", choices=("real", "small"),
                   help="random weights at this shape (fim_lsp.bench's checkpoints); default: tiny checkpoints")
    p.add_argument("--models-dir", type=Path, help="keep the random checkpoints here and reuse them")
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data",
                   help="where the real tokenizers are (for --random-config)")
    p.add_argument("--contexts", default="256,1024", help="context tokens of the equality checks")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--only", help="comma-separated check names to run (default: all)")
    args = p.parse_args(argv)
    if bool(args.ar_model) != bool(args.dllm_model):
        p.error("give both --ar-model and --dllm-model, or neither")
    return args


def checkpoints(args: argparse.Namespace, tmp: Path) -> tuple[str, str, str]:
    """(ar, dllm, description)."""
    if args.ar_model:
        return args.ar_model, args.dllm_model, "given checkpoints"
    if args.random_config:
        from fim_lsp.bench.models import write_random

        ck = write_random(args.models_dir or tmp, args.random_config, args.data_dir if args.data_dir.is_dir() else None)
        return str(ck.ar), str(ck.dllm), f"random {ck.shape} weights, {ck.tokenizer} tokenizer"
    import torch
    from transformers import AutoModelForCausalLM

    from fim_lsp.engine.ar_fim import stop_ids
    from fim_lsp.tiny import write_tiny

    out = write_tiny(args.models_dir or tmp)
    model = AutoModelForCausalLM.from_pretrained(out / "ar")
    from transformers import AutoTokenizer

    with torch.no_grad():
        model.get_output_embeddings().weight[stop_ids(AutoTokenizer.from_pretrained(out / "ar"))] = 0
    model.save_pretrained(out / "ar")
    return str(out / "ar"), str(out / "dllm"), "tiny checkpoints (fim_lsp.tiny)"


def main(argv: list[str] | None = None) -> int:
    from fim_lsp.engine.loading import quiet_transformers

    quiet_transformers()
    args = parse_args(argv)
    import torch

    from fim_lsp.engine.config import EngineConfig
    from fim_lsp.engine.loading import resolve_device

    from . import checks

    device = resolve_device(args.device)
    say = lambda line: print(line, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="fim-selfcheck-") as tmp:
        ar, dllm, described = checkpoints(args, Path(tmp))
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        say(f"selfcheck on {device} ({gpu}), torch {torch.__version__}, {described}, fp32, temperature 0")
        # the server's speed options, with full diffusion passes (the DualCache check turns it on)
        config = EngineConfig(ar_model=ar, dllm_model=dllm, device=str(device), dtype="float32", temperature=0.0,
                              max_new_tokens=args.max_new_tokens, profile="exact", dllm_threshold=0.9,
                              dllm_steps_per_token=0.25, compile="on", overlap="on")
        sizes = tuple(int(n) for n in args.contexts.split(",") if n.strip())
        ctx = checks.Context(config, device, sizes, say)
        plan = [("load", checks.check_load), ("no-empty-graph", checks.check_no_empty_graph),
                *((f"equal-{n}", lambda c, n=n: checks.check_equal(c, n)) for n in sizes),
                ("dual-cache", checks.check_dual_cache), ("new-shapes", checks.check_new_shapes),
                ("cancel", checks.check_cancel), ("reloads", checks.check_reloads),
                ("memory-cap", checks.check_memory_cap), ("second-gpu", checks.check_second_gpu)]
        only = set(args.only.split(",")) if args.only else None
        failed = 0
        for name, check in plan:
            if only and name not in only:
                continue
            t = time.perf_counter()
            try:
                result = check(ctx)
                word = "PASS" if result.ok else "FAIL"
                failed += not result.ok
                detail = result.detail
            except checks.Skip as why:
                word, detail = "SKIP", str(why)
            except Exception as err:  # noqa: BLE001 - a check that crashes is a failed check, the rest still run
                word, detail = "FAIL", f"{type(err).__name__}: {err}"
                failed += 1
            say(f"{word} {name} ({time.perf_counter() - t:.1f} s): {detail}")
        ctx.drop()
    say(f"selfcheck: {'all checks passed' if not failed else f'{failed} check(s) failed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
