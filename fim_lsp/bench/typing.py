"""python -m fim_lsp.bench.typing: a user typing at ~2k tokens of Qwen prompt, with prefix reuse on and off.

An editor session on a source tree nobody here wrote (`--package`, default the standard library's
asyncio; typing_session.py): the cursor's file open where a line uses a name defined in another file,
other files open and edited, project context gathered per request, Qwen's prompt capped at
`--prompt-tokens`. The user types the file's next `--keys` characters one by one; every keystroke is one
`Engine.complete_batch` request in the server's own configuration (its defaults, its single-line
decision), run with `prefixReuse` on and then off, in turns, for each model set of `--models`. It reports
per keystroke Qwen's prompt tokens computed, its prompt pass's seconds and the total latency, and per
model set the p50s and the off/on ratios, all measured in one run. The request before the first key
is not counted (the session's first prompt pass runs whole either way).

Qwen's prompt pass is `Completion.timings["qwen_prefill"]`: from the start of Qwen's generation to its
first token sampled. Random weights never stop by themselves, so Qwen writes `--new-tokens` tokens (8:
the server's single-line case as issue 20 times it), fewer when single-line mode ends the line first.

  python -m fim_lsp.bench.typing                                           # small random weights, a minute
  python -m fim_lsp.bench.typing --random-config real --keys 6 --models-dir /tmp/fim-real \\
      --json eval/benchmarks/typing-cpu-real.json                          # the real 0.5B shape
  python -m fim_lsp.bench.typing --ar-model DIR --dllm-model DIR --models qwen

Issue 20's bench calls `simulate` with its own engines and `TypingSession.keystrokes()`."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from fim_lsp.engine.ensemble import Engine
from fim_lsp.engine.results import Completion
from fim_lsp.percentile import percentile

from .models import add_model_args
from .typing_session import Keystroke

MODEL_SETS = ("qwen", "both")


@dataclass
class PassResult:
    models: str  # the engine's `models`: "qwen" (Qwen alone) or "both" (the ensemble)
    reuse: bool  # prefixReuse
    prompt_tokens: int  # Qwen's prompt
    computed: int  # of those, run through the network by this pass
    reused: int  # kept in the cache from the row's previous prompt
    prefill_s: float  # Qwen's prompt pass (and its first token's sampling)
    qwen_s: float  # Qwen's generation, the prompt pass included
    total_s: float  # the whole complete_batch call
    new_tokens: int  # Qwen's candidate's tokens
    qwen_text: str
    winner: str | None


@dataclass
class KeyResult:
    index: int
    typed: str
    single_line: bool
    gather_ms: float
    context_chunks: int
    passes: list[PassResult]


def _pass(models: str, reuse: bool, comp: Completion, total: float) -> PassResult:
    qwen = next(c for c in comp.candidates if c.model == "qwen")
    tokens = comp.prompt_tokens or {"computed": 0, "reused": 0}
    assert comp.qwen_prompt is not None
    return PassResult(models, reuse, len(comp.qwen_prompt.ids), tokens["computed"], tokens["reused"],
                      comp.timings.get("qwen_prefill", 0.0), comp.timings.get("qwen", 0.0), total, qwen.tokens,
                      qwen.text, comp.winner.model if comp.winner else None)


def warm_up(engines: Mapping[str, Engine], key: Keystroke) -> None:
    """The first request's one-off costs (the single-line stop tables, first-call setup) out of the timings:
    the first keystroke's request in both line modes, untimed."""
    for engine in engines.values():
        for single in (True, False):
            engine.complete_batch([dataclasses.replace(key.request, single_line=single)])


def simulate(engines: Mapping[str, Engine], keystrokes: Iterable[Keystroke],
             on_key: Callable[[KeyResult], None] | None = None) -> list[KeyResult]:
    """Each keystroke's request through each engine (keyed by a name: its model set), with prefix reuse
    on, then off. Each engine must need Qwen (models qwen or both). The engines' configs are otherwise
    left as given, and prefixReuse is left on at the end.

    On before off, at every key: a pass without reuse leaves the row holding the key's whole prompt, as a
    pass with reuse would, so the next key's pass with reuse starts from the previous key's prompt, as it
    does in an editor. The other order would hand it the key's own prompt."""
    out = []
    for key in keystrokes:
        passes = []
        for name, engine in engines.items():
            for reuse in (True, False):
                engine.reconfigure(engine.config.replace(prefix_reuse=reuse))
                t = time.perf_counter()
                comp = engine.complete_batch([key.request])[0]
                passes.append(_pass(name, reuse, comp, time.perf_counter() - t))
            engine.reconfigure(engine.config.replace(prefix_reuse=True))
        context = key.request.context
        result = KeyResult(key.index, key.typed, key.request.single_line, key.gather_ms,
                           len(context.chunks) if context else 0, passes)
        out.append(result)
        if on_key is not None:
            on_key(result)
    return out


def _p50(values: list[float]) -> float | None:
    return percentile(values, 0.5) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(keys: list[KeyResult]) -> dict[str, Any]:
    """p50s per model set and mode over the keystrokes after the first request, their off/on ratios,
    and the ensemble over Qwen alone where both ran: ratios of p50s, all from this run."""
    timed = [k for k in keys if k.index > 0]
    passes = [p for k in timed for p in k.passes]
    out: dict[str, Any] = {
        "keystrokes": len(timed),
        "prompt_tokens_p50": _p50([float(p.prompt_tokens) for p in passes]),
        "context_chunks_p50": _p50([float(k.context_chunks) for k in timed]),
        "gather_ms_p50": _p50([k.gather_ms for k in timed]), "models": {}}
    for models in dict.fromkeys(p.models for p in passes):
        row: dict[str, Any] = {}
        for mode, reuse in (("on", True), ("off", False)):
            mine = [p for p in passes if p.models == models and p.reuse == reuse]
            row[mode] = {"computed_p50": _p50([float(p.computed) for p in mine]),
                         "reused_p50": _p50([float(p.reused) for p in mine]),
                         "prefill_s_p50": _p50([p.prefill_s for p in mine]),
                         "total_s_p50": _p50([p.total_s for p in mine]),
                         "new_tokens_mean": sum(p.new_tokens for p in mine) / len(mine)}
        row["off_over_on"] = {f: _ratio(row["off"][f"{f}_p50"], row["on"][f"{f}_p50"])
                              for f in ("computed", "prefill_s", "total_s")}
        pairs = [(k.passes, models) for k in timed]
        same = [_qwen_text(ps, m, True) == _qwen_text(ps, m, False) for ps, m in pairs]
        row["qwen_same_share"] = sum(same) / len(same) if same else None  # the same answer either way
        out["models"][models] = row
    if {"qwen", "both"} <= out["models"].keys():
        m = out["models"]
        out["ensemble_over_qwen"] = {mode: _ratio(m["both"][mode]["total_s_p50"], m["qwen"][mode]["total_s_p50"])
                                     for mode in ("on", "off")}
    return out


def _qwen_text(passes: list[PassResult], models: str, reuse: bool) -> str:
    return next(p.qwen_text for p in passes if p.models == models and p.reuse == reuse)


def _f(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def print_key(k: KeyResult, out: Any = None) -> None:
    w = (out or sys.stderr).write
    for models in dict.fromkeys(p.models for p in k.passes):
        on, off = (next(p for p in k.passes if p.models == models and p.reuse == r) for r in (True, False))
        w(f"key {k.index:>3} {k.typed!r:>6} {'1-line' if k.single_line else 'multi':<6} {models:<5} "
          f"prompt {on.prompt_tokens:>5}  computed on/off {on.computed:>5}/{off.computed:<5} "
          f"prompt pass ms {on.prefill_s * 1000:>8.1f}/{off.prefill_s * 1000:<8.1f} "
          f"total ms {on.total_s * 1000:>8.1f}/{off.total_s * 1000:<8.1f} gather {k.gather_ms:.1f} ms\n")


def table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table (eval/BENCHMARKS.md takes it as printed)."""
    lines = ["| models | prefix reuse | Qwen prompt tokens computed p50 | Qwen prompt pass p50 ms | total p50 ms | "
             "Qwen tokens written, mean |", "|---|---|---:|---:|---:|---:|"]
    for models, row in summary["models"].items():
        for mode in ("on", "off"):
            r = row[mode]
            lines.append(f"| {models} | {mode} | {_f(r['computed_p50'], 0)} | {_f(r['prefill_s_p50'] * 1000, 1)} | "
                         f"{_f(r['total_s_p50'] * 1000, 1)} | {_f(r['new_tokens_mean'], 1)} |")
        ratio = row["off_over_on"]
        lines.append(f"| {models} | **off / on** | **{_f(ratio['computed'])}** | **{_f(ratio['prefill_s'])}** | "
                     f"**{_f(ratio['total_s'])}** | |")
    lines.append("")
    lines.append(f"{summary['keystrokes']} keystrokes; Qwen prompt {_f(summary['prompt_tokens_p50'], 0)} tokens p50 "
                 f"({_f(summary['context_chunks_p50'], 0)} context chunks p50); gathering {_f(summary['gather_ms_p50'])} "
                 f"ms p50 (not in the totals)")
    same = ", ".join(f"{m} {_f(r['qwen_same_share'])}" for m, r in summary["models"].items())
    lines.append(f"Qwen's answer the same with reuse on and off (share of keystrokes): {same}")
    if "ensemble_over_qwen" in summary:
        e = summary["ensemble_over_qwen"]
        lines.append(f"ensemble over Qwen alone, total p50: reuse on {_f(e['on'])}, off {_f(e['off'])}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from fim_lsp.server.settings import ServerSettings

    p = argparse.ArgumentParser(prog="python -m fim_lsp.bench.typing", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, "; default: --random-config small")
    p.add_argument("--models", default=",".join(MODEL_SETS),
                   help="comma-separated model sets: qwen (Qwen alone), both (the ensemble)")
    p.add_argument("--package", default="asyncio", help="an installed package whose source is the session's tree")
    p.add_argument("--root", type=Path, help="a source folder instead of --package")
    p.add_argument("--keys", type=int, default=12, help="characters typed, one request each")
    p.add_argument("--prompt-tokens", type=int, default=2048,
                   help="Qwen's whole prompt at most (contextTotalTokens); the local window keeps the server's "
                        f"{ServerSettings().max_prefix_tokens} + {ServerSettings().max_suffix_tokens}")
    p.add_argument("--new-tokens", type=int, default=8,
                   help="Qwen's budget per request (random weights never stop); 0: the server's maxNewTokens")
    p.add_argument("--seed", type=int, default=0, help="picks the cursor and the open files")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", type=Path, help="write every figure here")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if bool(args.ar_model) != bool(args.dllm_model):
        p.error("give both --ar-model and --dllm-model, or neither (random weights)")
    if args.ar_model and args.random_config:
        p.error("--random-config makes its own models: drop --ar-model/--dllm-model")
    if not args.ar_model and not args.random_config:
        args.random_config = "small"
    args.model_sets = [m for m in args.models.split(",") if m.strip()]
    if not args.model_sets or any(m not in MODEL_SETS for m in args.model_sets):
        p.error(f"--models takes a comma-separated subset of {', '.join(MODEL_SETS)}")
    if args.keys < 1 or args.new_tokens < 0:
        p.error("--keys must be >= 1 and --new-tokens >= 0")
    return args


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import torch

    from .context import package_root
    from .models import resolve_checkpoints
    from .report import machine
    from .server_variant import server_config
    from .typing_session import TypingSession, budget

    if args.threads:
        torch.set_num_threads(args.threads)
    ar, dllm, model_meta = resolve_checkpoints(args.random_config, args.ar_model, args.dllm_model, args.models_dir,
                                               args.data_dir, tmp)
    root = args.root or package_root(args.package)
    session = TypingSession(root, args.keys, budget(args.prompt_tokens), args.seed, new_tokens=args.new_tokens or None)
    doc: dict[str, Any] = {
        "meta": {"command": "python -m fim_lsp.bench.typing " + " ".join(args.argv),
                 "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, **model_meta,
                 "tree": str(root), "file": str(session.path.relative_to(root)), "typed": session.typed_text,
                 "machine_at_start": machine(), "load_seconds": {}}}
    print(f"typing {session.typed_text!r} into {session.path} ({len(args.model_sets)} model set(s), reuse on/off)",
          file=sys.stderr)
    engines = {}
    base = server_config(ar, dllm, args.device, args.dtype)
    for models in args.model_sets:
        t = time.perf_counter()
        engines[models] = Engine(base.replace(models=models))
        engines[models].load()
        doc["meta"]["load_seconds"][models] = time.perf_counter() - t
    keys = session.keystrokes()
    first = next(keys)
    warm_up(engines, first)
    results = simulate(engines, [first, *keys], print_key)
    doc["meta"]["machine_at_end"] = machine()
    doc["config"] = {m: dataclasses.asdict(e.config) for m, e in engines.items()}
    doc["summary"] = summarize(results)
    doc["keystrokes"] = [dataclasses.asdict(k) for k in results]
    return doc


def main(argv: list[str] | None = None) -> int:
    from fim_lsp.engine.loading import quiet_transformers

    quiet_transformers()
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fim-typing-") as tmp:
        doc = run(args, Path(tmp))
    print(table(doc["summary"]))
    load = doc["meta"]["machine_at_end"].get("loadavg")
    print(f"load average at the end: {load}")
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
