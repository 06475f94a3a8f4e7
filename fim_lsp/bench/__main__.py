"""python -m fim_lsp.bench: latency, forward passes, tokens and memory per stage, for the exact path, the
editor profile and each speed option alone, with every ratio taken within the same run.

  python -m fim_lsp.bench --random-config real --context-tokens 256 --hole-tokens 16 --json bench.json
  python -m fim_lsp.bench --ar-model DIR --dllm-model DIR --device cuda --context-tokens 256,1024"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _ints(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fim_lsp.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("models (paths, or random weights at a given shape)")
    m.add_argument("--ar-model", help="local dir or Hub id of the autoregressive model")
    m.add_argument("--dllm-model", help="local dir or Hub id of the diffusion model")
    m.add_argument("--random-config", choices=("real", "small"),
                   help="random weights: real = the 0.5B Qwen2 shape of both models; small = a tiny network")
    m.add_argument("--models-dir", type=Path,
                   help="keep the random checkpoints here and reuse them next time (default: a temp dir)")
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data",
                   help="folder laid out like shared/data (HumanEval-Infilling, tokenizers)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    p.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on GPU), float32, bfloat16")
    p.add_argument("--context-tokens", type=_ints, default=[256], help="comma-separated context lengths")
    p.add_argument("--hole-tokens", type=_ints, default=[16], help="comma-separated hole lengths")
    p.add_argument("--prefix-share", type=float, default=0.75, help="share of the context before the hole")
    p.add_argument("--samples", type=int, default=1, help="contexts (HumanEval problems) per length")
    p.add_argument("--repeats", type=int, default=1, help="completions per context and variant")
    p.add_argument("--variants", help="comma-separated subset to run (qwen-alone always runs); default: all")
    e = p.add_argument_group("engine settings shared by every variant")
    e.add_argument("--temperature", type=float, default=0.0, help="0: greedy, so outputs can be compared")
    e.add_argument("--steps", type=int, default=64)
    e.add_argument("--alg", default="p2")
    e.add_argument("--max-new-tokens", type=int, help="Qwen's budget (default: the hole length)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", type=Path, help="write every figure here (rewritten after each variant)")
    args = p.parse_args(argv)
    if args.random_config is None and not (args.ar_model and args.dllm_model):
        p.error("give --ar-model and --dllm-model, or --random-config real|small")
    return args


def _checkpoints(args: argparse.Namespace, tmp: Path) -> tuple[str, str, dict[str, Any]]:
    if args.random_config is None:
        return args.ar_model, args.dllm_model, {"models": "given"}
    from .models import SHAPES, write_random

    t = time.perf_counter()
    data = args.data_dir if args.data_dir.is_dir() else None
    ck = write_random(args.models_dir or tmp, args.random_config, data)
    print(f"random {ck.shape} checkpoints in {ck.ar.parent} ({time.perf_counter() - t:.0f} s), "
          f"tokenizer: {ck.tokenizer}", file=sys.stderr)
    return str(ck.ar), str(ck.dllm), {"models": f"random {ck.shape}", "shape": SHAPES[ck.shape].__dict__,
                                      "tokenizer": ck.tokenizer}


def run(args: argparse.Namespace, tmp: Path) -> int:
    import torch
    from transformers import AutoTokenizer

    from fim_lsp.engine.config import EngineConfig
    from fim_lsp.engine.ensemble import Engine, FimRequest

    from .contexts import make_contexts, read_problems
    from .measure import measure
    from .report import machine, print_group, to_json
    from .stats import group_report
    from .variants import build_variants

    if args.threads:
        torch.set_num_threads(args.threads)
    ar, dllm, model_meta = _checkpoints(args, tmp)
    problems = read_problems(args.data_dir)
    tok = AutoTokenizer.from_pretrained(ar)
    contexts = {n: make_contexts(problems, tok, n, args.samples, args.prefix_share) for n in args.context_tokens}
    base = EngineConfig(ar_model=ar, dllm_model=dllm, device=args.device, dtype=args.dtype,
                        temperature=args.temperature, steps=args.steps, alg=args.alg, seed=0)
    variants, notes = build_variants(base, args.variants.split(",") if args.variants else None)
    # The editor profile right after Qwen alone: in a run cut short, its figures are in the JSON first.
    order = {"qwen-alone": 0, "editor": 1, "exact": 2, "option": 3}
    variants.sort(key=lambda v: order.get(v.name, order.get(v.kind, 3)))
    meta: dict[str, Any] = {"command": "python -m fim_lsp.bench " + " ".join(sys.argv[1:]), "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, **model_meta,
        "machine_at_start": machine(), "notes": notes, "complete": False,
        "contexts": {n: [c.__dict__ | {"prefix": None, "suffix": None} for c in cs] for n, cs in contexts.items()}}
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    samples: list[Any] = []

    def report(final: bool) -> list[Any]:
        kinds = {v.name: v.kind for v in variants}
        groups = []
        for n in args.context_tokens:
            for hole in args.hole_tokens:
                by_variant = {v.name: [s for s in samples if s.variant == v.name and s.context_tokens == n
                                       and s.hole_tokens == hole] for v in variants}
                groups.append(group_report(n, hole, by_variant, kinds))
        if args.json:
            if final:
                meta["complete"], meta["machine_at_end"] = True, machine()
            args.json.write_text(to_json(meta, variants, samples, groups))
        return groups

    # Variants take turns on each context (round-robin) rather than running one after another: on a
    # shared machine the background load drifts, and turns spread that drift over every variant alike.
    engines: dict[str, Any] = {}
    for v in variants:
        if v.config.models not in engines:
            t = time.perf_counter()
            engines[v.config.models] = Engine(v.config)
            engines[v.config.models].load()
            print(f"loaded models={v.config.models} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    for hole in args.hole_tokens:
        configs = {v.name: v.config if "max_new_tokens" in v.changes
                   else v.config.replace(max_new_tokens=args.max_new_tokens or hole) for v in variants}

        def use(v: Any) -> Any:
            engine = engines[v.config.models]
            if engine.reconfigure(configs[v.name]):
                engine.load()
            return engine

        for v in variants:
            # One untimed one-token completion per configuration: the first call pays for lazy setup.
            use(v).complete_batch([FimRequest("def f():\n    return ", "\n", dllm_length=1)])
        for n, cs in contexts.items():
            for ci, c in enumerate(cs):
                for r in range(args.repeats):
                    for v in variants:
                        s = measure(use(v), FimRequest(c.prefix, c.suffix, dllm_length=hole), v.name, ci, r,
                                    n, hole)
                        samples.append(s)
                        print(f"{v.name} ctx={n} hole={hole} #{ci}.{r}: total {s.total_seconds:.2f} s "
                              + " ".join(f"{k} {st.seconds:.2f} s/{st.forward_passes} fp"
                                         for k, st in s.stages.items()), file=sys.stderr)
                    report(final=False)
    for g in report(final=True):
        print_group(g)
    if args.json:
        print(f"\nwrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass
    with tempfile.TemporaryDirectory(prefix="fim-bench-") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
