"""python -m fim_lsp.bench: latency, forward passes, tokens and memory per stage, for the server's own
configuration, the exact path, the editor profile and each speed option alone, with every ratio taken
within the same run.

  python -m fim_lsp.bench --random-config real --device cuda --variants server   # issue 9's targets
  python -m fim_lsp.bench --random-config real --context-tokens 256 --hole-tokens 16 --json bench.json
  python -m fim_lsp.bench --ar-model DIR --dllm-model DIR --device cuda --context-tokens 256,1024"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fim_lsp.engine.config import EngineConfig
from fim_lsp.server.settings import ServerSettings

from .models import add_model_args



def _ints(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fim_lsp.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on a GPU and on a CPU with AVX-512 BF16 or AMX-BF16, else fp32), float32, bfloat16")
    p.add_argument("--context-tokens", type=_ints,
                   help="comma-separated context lengths (default: 256,1024 when --variants names server, else 256)")
    p.add_argument("--hole-tokens", type=_ints, default=[16],
                   help="comma-separated oracle hole lengths (the server variant's is unknown, as in the server)")
    p.add_argument("--prefix-share", type=float, default=0.75, help="share of the context before the hole")
    p.add_argument("--samples", type=int, default=1, help="contexts (HumanEval problems) per length")
    p.add_argument("--repeats", type=int, default=1, help="completions per context and variant")
    p.add_argument("--variants", help="comma-separated subset to run (with the Qwen alone each is compared "
                   "with: qwen-alone, or server-qwen-alone for server); default: all")
    p.add_argument("--multiline", default=ServerSettings().multiline,
                   help="auto|always|never: the server setting, for the server variant. auto decides single-line "
                   "mode per context as the server does; never forces single-line mode, always multi-line")
    e = p.add_argument_group("engine settings; given explicitly, they also override the server variant's defaults")
    e.add_argument("--temperature", type=float, help="oracle variants: 0 (greedy, so outputs can be compared)")
    e.add_argument("--steps", type=int, help=f"default {EngineConfig.steps}")
    e.add_argument("--alg", help=f"default {EngineConfig.alg}")
    e.add_argument("--compile", choices=("auto", "on", "off"), help="default auto: on for CUDA (graphs)")
    e.add_argument("--overlap", choices=("auto", "on", "off"),
                   help="default auto: diffusion beside Qwen on a second stream when compiled on CUDA")
    e.add_argument("--dllm-cache-refresh", type=int,
                   help="DualCache refresh interval (default: the profile's for the device; 0 = none)")
    e.add_argument("--max-new-tokens", type=int,
                   help="Qwen's budget (oracle variants: the hole length; server: its own, capped by the "
                   "simulated stop)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", type=Path, help="write every figure here (rewritten after each variant)")
    args = p.parse_args(argv)
    if args.random_config is None and not (args.ar_model and args.dllm_model):
        p.error("give --ar-model and --dllm-model, or --random-config real|small")
    try:
        ServerSettings(multiline=args.multiline).validate()
    except ValueError as err:
        p.error(str(err))
    if args.context_tokens is None:
        args.context_tokens = [256, 1024] if "server" in (args.variants or "").split(",") else [256]
    return args


def _checkpoints(args: argparse.Namespace, tmp: Path) -> tuple[str, str, dict[str, Any]]:
    from .models import resolve_checkpoints

    return resolve_checkpoints(args.random_config, args.ar_model, args.dllm_model, args.models_dir,
                               args.data_dir, tmp)


def engine_configs(args: argparse.Namespace, ar: str, dllm: str) -> tuple[EngineConfig, EngineConfig]:
    """(the oracle variants' base, the server's own configuration). Engine options given explicitly apply
    to both; left out, the oracle variants run greedy and the server variant keeps the server's defaults."""
    from .server_variant import server_config

    explicit = {k: getattr(args, k) for k in ("temperature", "steps", "alg", "compile", "overlap", "dllm_cache_refresh")
                if getattr(args, k) is not None}
    base = EngineConfig(ar_model=ar, dllm_model=dllm, device=args.device, dtype=args.dtype, seed=0,
                        **({"temperature": 0.0} | explicit))
    if args.max_new_tokens is not None:
        explicit["max_new_tokens"] = args.max_new_tokens
    return base, server_config(ar, dllm, args.device, args.dtype, explicit)


def run(args: argparse.Namespace, tmp: Path) -> int:
    import torch
    from transformers import AutoTokenizer

    from fim_lsp.engine.ensemble import Engine, FimRequest
    from fim_lsp.engine.loading import resolve_device

    from .contexts import make_contexts, read_problems
    from .measure import measure
    from .report import machine, print_group, print_server_targets, to_json
    from .server_variant import simulated_stop, single_line
    from .stats import group_report, server_checks
    from .variants import build_variants

    if args.threads:
        torch.set_num_threads(args.threads)
    ar, dllm, model_meta = _checkpoints(args, tmp)
    problems = read_problems(args.data_dir)
    tok = AutoTokenizer.from_pretrained(ar)
    contexts = {n: make_contexts(problems, tok, n, args.samples, args.prefix_share) for n in args.context_tokens}
    base, server = engine_configs(args, ar, dllm)
    variants, notes = build_variants(base, server, args.variants.split(",") if args.variants else None,
                                     resolve_device(args.device).type)
    # The server variant first, then the editor profile, each after its Qwen alone: in a run cut short,
    # their figures are in the JSON first.
    order = {"server-qwen-alone": 0, "server": 1, "server-no-line-stop": 1.5, "qwen-alone": 2, "editor": 3,
             "exact": 4, "option": 5}
    variants.sort(key=lambda v: order.get(v.name, order.get(v.kind, 5)))
    server_kinds = ("server", "server-qwen-alone", "server-before")
    has_server = any(v.kind == "server" for v in variants)
    meta: dict[str, Any] = {"command": "python -m fim_lsp.bench " + " ".join(sys.argv[1:]), "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, **model_meta,
        "machine_at_start": machine(), "notes": notes, "complete": False, "load_seconds": {},
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
        if has_server:
            meta["server_targets"] = server_checks(groups)
        if args.json:
            if final:
                meta["complete"], meta["machine_at_end"] = True, machine()
            args.json.write_text(to_json(meta, variants, samples, groups))
        return groups

    # One engine per model set, shared by the variants (Engine.reconfigure reloads when a field needs it).
    # The server's variants come first, so each engine loads (and compiles, when on) in the server's config.
    engines: dict[str, Any] = {}
    for v in variants:
        if v.config.models not in engines:
            t = time.perf_counter()
            engines[v.config.models] = Engine(v.config)
            engines[v.config.models].load()
            meta["load_seconds"][v.config.models] = time.perf_counter() - t
            print(f"loaded models={v.config.models} ({v.name}'s config) in "
                  f"{meta['load_seconds'][v.config.models]:.1f} s", file=sys.stderr)

    def request(v: Any, prefix: str, suffix: str, middle: str, hole: int) -> Any:
        if v.kind not in server_kinds:
            return FimRequest(prefix, suffix, dllm_length=hole)
        if v.kind == "server-before":  # no single-line flag: Qwen runs to its budget, as before issue 9
            return FimRequest(prefix, suffix, max_new_tokens=configs[v.name].max_new_tokens)
        # the server's request: hole length unknown, its single-line decision, Qwen stopped where a
        # trained model would have (random weights never stop)
        return FimRequest(prefix, suffix, single_line=single_line(prefix, suffix, args.multiline),
                          max_new_tokens=min(simulated_stop(tok, middle), configs[v.name].max_new_tokens))

    # Variants take turns on each context (round-robin) rather than running one after another: on a
    # shared machine the background load drifts, and turns spread that drift over every variant alike.
    for hole in args.hole_tokens:
        configs = {v.name: v.config if "max_new_tokens" in v.changes or v.kind in server_kinds
                   else v.config.replace(max_new_tokens=args.max_new_tokens or hole) for v in variants}

        def use(v: Any) -> Any:
            engine = engines[v.config.models]
            if engine.reconfigure(configs[v.name]):
                engine.load()
            return engine

        for v in variants:
            # One untimed short completion per configuration: the first call pays for lazy setup.
            use(v).complete_batch([request(v, "def f(x):\n    return ", " + 1\n", "x\n", 1)])
        for n, cs in contexts.items():
            for ci, c in enumerate(cs):
                for r in range(args.repeats):
                    for v in variants:
                        s = measure(use(v), request(v, c.prefix, c.suffix, c.middle, hole), v.name, ci, r, n, hole)
                        samples.append(s)
                        print(f"{v.name} ctx={n} hole={hole} #{ci}.{r}: total {s.total_seconds:.2f} s "
                              + " ".join(f"{k} {st.seconds:.2f} s/{st.forward_passes} fp"
                                         for k, st in s.stages.items()), file=sys.stderr)
                    report(final=False)
    groups = report(final=True)
    for g in groups:
        print_group(g)
    if has_server:
        decode = {n: next((g.summaries["server"].qwen_decode_ms_per_token_p50 for g in groups
                           if g.context_tokens == n and "server" in g.summaries), None) for n in args.context_tokens}
        print_server_targets(meta["server_targets"], decode, meta["load_seconds"])
    if args.json:
        print(f"\nwrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from fim_lsp.engine.loading import quiet_transformers

    quiet_transformers()
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fim-bench-") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
