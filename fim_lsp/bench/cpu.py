"""python -m fim_lsp.bench.cpu: fim-lsp beside llama.cpp on a CPU, on the same weights, in one run.

llama.cpp runs the bench's Qwen checkpoint converted to GGUF (q8_0 and f32), fim-lsp the same checkpoint
alone (fp32 and bf16, compile off and on) and beside the diffusion model at the server's defaults. Every
row gets the same prompt token ids and generates the same number of tokens (the server's single-line
case). Cold: nothing cached. While typing: llama.cpp reuses its prompt cache (the last 3 tokens new, or
one character typed at the cursor, which re-evaluates the suffix); fim-lsp gets the previous request
first, then the new one. The rows take turns call by call, so the shared machine's drifting load falls
on all of them alike; every ratio is taken within the run. Then the top-p cut's cost per decode step.

  python -m fim_lsp.bench.cpu --random-config real --models-dir /tmp/bench-real --json cpu.json
  python -m fim_lsp.bench.cpu --random-config real --rows llama-q8,qwen-fp32,ensemble-fp32 --calls 5

The llama.cpp rows need the optional extra (pip install -e '.[llamacpp]'); without it they are skipped
with the command that installs it, and the fim-lsp rows still run."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .models import ROOT

COLD, LAST3, TYPED = "cold", "last 3 tokens new", "one character typed"


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    runner: str  # "llama.cpp" or "fim-lsp"
    weights: str  # llama.cpp: "q8_0" or "f32"; fim-lsp: the torch dtype
    typing: str = COLD
    compile: str = "auto"
    models: str = "qwen"
    decode_weights: str = "auto"  # fim-lsp: int8 on a CPU
    dllm_lengths_single_line: tuple[int, ...] = ()  # fim-lsp's ensemble: () keeps the server's


ROWS = [
    Row("llama-q8", "llama.cpp q8_0, cold", "llama.cpp", "q8_0"),
    Row("llama-f32", "llama.cpp f32, cold", "llama.cpp", "f32"),
    Row("llama-q8-last3", "llama.cpp q8_0, last 3 tokens new", "llama.cpp", "q8_0", LAST3),
    Row("llama-q8-typed", "llama.cpp q8_0, one character typed", "llama.cpp", "q8_0", TYPED),
    Row("qwen-fp32", "fim-lsp qwen, fp32, int8 decode", "fim-lsp", "float32"),
    Row("qwen-fp32-exact", "fim-lsp qwen, fp32, exact decode", "fim-lsp", "float32", decode_weights="exact"),
    Row("qwen-fp32-compile", "fim-lsp qwen, fp32 --compile on", "fim-lsp", "float32", compile="on"),
    Row("qwen-bf16", "fim-lsp qwen, bf16, int8 decode", "fim-lsp", "bfloat16"),
    Row("qwen-bf16-exact", "fim-lsp qwen, bf16, exact decode", "fim-lsp", "bfloat16", decode_weights="exact"),
    Row("qwen-bf16-compile", "fim-lsp qwen, bf16 --compile on", "fim-lsp", "bfloat16", compile="on"),
    Row("qwen-fp32-typed", "fim-lsp qwen, fp32, one character typed", "fim-lsp", "float32", TYPED),
    Row("qwen-bf16-typed", "fim-lsp qwen, bf16, one character typed", "fim-lsp", "bfloat16", TYPED),
    Row("ensemble-fp32", "fim-lsp ensemble, fp32, server defaults", "fim-lsp", "float32", models="both"),
    Row("ensemble-fp32-typed", "fim-lsp ensemble, fp32, one character typed", "fim-lsp", "float32", TYPED,
        models="both"),
    Row("ensemble-bf16", "fim-lsp ensemble, bf16, server defaults", "fim-lsp", "bfloat16", models="both"),
    Row("ensemble-bf16-typed", "fim-lsp ensemble, bf16, one character typed", "fim-lsp", "bfloat16", TYPED,
        models="both"),
    # the lever on the diffusion stage: one hole length (one batch row) in single-line mode, not two
    Row("ensemble-bf16-len8", "fim-lsp ensemble, bf16, dllm single-line lengths [8]", "fim-lsp", "bfloat16",
        models="both", dllm_lengths_single_line=(8,)),
    Row("ensemble-bf16-len8-typed", "fim-lsp ensemble, bf16, [8], one character typed", "fim-lsp", "bfloat16",
        TYPED, models="both", dllm_lengths_single_line=(8,)),
]
BASELINE = "llama-q8"
# the llama.cpp row of each typing case, and the Qwen-alone row an ensemble row is compared with (same
# typing case, same weights)
LLAMA_CASE = {COLD: "llama-q8", LAST3: "llama-q8-last3", TYPED: "llama-q8-typed"}
QWEN_CASE = {(COLD, "float32"): "qwen-fp32", (TYPED, "float32"): "qwen-fp32-typed",
             (COLD, "bfloat16"): "qwen-bf16", (TYPED, "bfloat16"): "qwen-bf16-typed"}


@dataclass
class Call:
    row: str
    call: int
    total_s: float
    prompt_s: float | None
    decode_ms_per_token: float | None
    tokens: int
    prompt_tokens: int
    evaluated: int  # prompt tokens computed (the rest came from a cache)
    dllm_s: float | None = None  # fim-lsp's ensemble: the diffusion stage's seconds
    score_s: float | None = None  # fim-lsp: the scoring stage's seconds (after the generators)


@dataclass
class Prompts:
    """The cold prompt, and the two typing cases' (previous, new) prompts, as text and as Qwen's ids."""
    prefix: str
    suffix: str
    before: str  # the prefix with the cursor after the line's indentation
    typed: str  # ... and one character typed there
    ids: list[int]
    ids_before: list[int]
    ids_typed: list[int]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fim_lsp.bench.cpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ar-model", help="local Qwen2 checkpoint (default: random weights, --random-config)")
    p.add_argument("--dllm-model", help="local diffusion checkpoint (with --ar-model)")
    p.add_argument("--random-config", choices=("real", "small"), default="real")
    p.add_argument("--models-dir", type=Path, help="keep/reuse the random checkpoints and their GGUF files here")
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--context-tokens", type=int, default=256, help="prefix + suffix tokens (the FIM tokens add 3)")
    p.add_argument("--tokens", type=int, default=8, help="tokens generated per call (8: a single line)")
    p.add_argument("--calls", type=int, default=12, help="timed calls per row (p50 over them)")
    p.add_argument("--threads", type=int, default=2, help="threads for torch and for llama.cpp")
    p.add_argument("--rows", help=f"comma-separated subset of: {', '.join(r.key for r in ROWS)}")
    p.add_argument("--json", type=Path, help="write every call and summary here")
    args = p.parse_args(argv)
    keys = [r.key for r in ROWS]
    args.rows = [k.strip() for k in args.rows.split(",")] if args.rows else keys
    unknown = set(args.rows) - set(keys)
    if unknown:
        p.error(f"unknown row(s) {', '.join(sorted(unknown))}; choose from {', '.join(keys)}")
    if bool(args.ar_model) != bool(args.dllm_model):
        p.error("give both --ar-model and --dllm-model, or neither (random weights)")
    return args


def make_prompts(tokenizer: Any, data_dir: Path, context_tokens: int) -> Prompts:
    from fim_lsp.engine.ar_fim import fim_ids

    from .contexts import make_contexts, read_problems

    c = make_contexts(read_problems(data_dir), tokenizer, context_tokens, 1)[0]
    line = c.middle
    indent = line[: len(line) - len(line.lstrip())]
    before = c.prefix + indent
    typed = before + (line.strip()[:1] or "x")
    return Prompts(c.prefix, c.suffix, before, typed, fim_ids(tokenizer, c.prefix, c.suffix),
                   fim_ids(tokenizer, before, c.suffix), fim_ids(tokenizer, typed, c.suffix))


def llama_call(runner: Any, row: Row, prompts: Prompts, args: argparse.Namespace, sampling: tuple[float, float],
               i: int) -> Call:
    prompt, cached = {COLD: (prompts.ids, None), LAST3: (prompts.ids, prompts.ids[:-3]),
                      TYPED: (prompts.ids_typed, prompts.ids_before)}[row.typing]
    t = runner.run(prompt, args.tokens, cached, *sampling)
    return Call(row.key, i, t.total_s, t.prompt_s, t.decode_ms_per_token, t.tokens, len(prompt), t.evaluated)


def fim_call(engine: Any, row: Row, prompts: Prompts, args: argparse.Namespace, i: int,
             server_lengths: tuple[int, ...]) -> Call:
    from fim_lsp.engine.requests import FimRequest

    from .measure import measure

    def request(prefix: str) -> FimRequest:
        return FimRequest(prefix, prompts.suffix, single_line=True, max_new_tokens=args.tokens)

    # cold: nothing kept from the previous request (rows share an engine, and the typed rows' prompts
    # share their beginning with the cold one), as llama.cpp's cold rows reset its cache; typed: the
    # server's default, prefix reuse on
    engine.reconfigure(engine.config.replace(
        prefix_reuse=row.typing != COLD, dllm_lengths_single_line=row.dllm_lengths_single_line or server_lengths))
    if row.typing == TYPED:
        engine.complete_batch([request(prompts.before)])  # the previous keystroke's request, untimed
    prefix, ids = (prompts.typed, prompts.ids_typed) if row.typing == TYPED else (prompts.prefix, prompts.ids)
    s = measure(engine, request(prefix), row.key, 0, i, args.context_tokens, args.tokens)
    return Call(row.key, i, s.total_seconds, s.qwen_prefill_s, s.qwen_decode_ms_per_token,
                s.stages["qwen"].out_tokens if "qwen" in s.stages else 0, len(ids),
                s.prompt_tokens.get("computed", len(ids)),
                s.stages["dllm"].seconds if "dllm" in s.stages else None,
                s.stages["score"].seconds if "score" in s.stages else None)


def summarize(calls: list[Call], rows: list[Row]) -> dict[str, dict[str, Any]]:
    from fim_lsp.percentile import percentile

    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        cs = [c for c in calls if c.row == r.key]
        if not cs:
            continue

        def p50(attr: str) -> float | None:
            return percentile([getattr(c, attr) for c in cs if getattr(c, attr) is not None], 0.5)

        out[r.key] = {"label": r.label, "calls": len(cs), "total_p50_s": p50("total_s"),
                      "prompt_p50_ms": (p50("prompt_s") or 0) * 1000 if p50("prompt_s") is not None else None,
                      "decode_ms_per_token_p50": p50("decode_ms_per_token"), "tokens": p50("tokens"),
                      "prompt_tokens": cs[0].prompt_tokens, "evaluated": p50("evaluated"),
                      "dllm_p50_s": p50("dllm_s"), "score_p50_s": p50("score_s")}
    for r in rows:
        s = out.get(r.key)
        if s is None:
            continue
        for name, other in (("over_llama_q8_cold", BASELINE), ("over_llama_same_case", LLAMA_CASE.get(r.typing)),
                            ("over_qwen_alone", QWEN_CASE.get((r.typing, r.weights)) if r.models == "both" else None)):
            o = out.get(other) if other else None
            s[name] = s["total_p50_s"] / o["total_p50_s"] if o and o["total_p50_s"] else None
    return out


def _f(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def print_table(summary: dict[str, dict[str, Any]], args: argparse.Namespace, out: Any = None) -> None:
    w = (out or sys.stdout).write
    w(f"\n{'row':<46}{'total p50':>10}{'prompt ms':>10}{'decode ms/tok':>14}{'tokens':>7}{'evaluated':>10}"
      f"{'/llama q8':>10}{'/llama case':>12}{'/qwen':>7}{'dllm s':>8}\n")
    for s in summary.values():
        w(f"{s['label']:<46}{_f(s['total_p50_s'], '.3f'):>9}s{_f(s['prompt_p50_ms'], '.0f'):>10}"
          f"{_f(s['decode_ms_per_token_p50'], '.1f'):>14}{_f(s['tokens'], '.0f'):>7}"
          f"{_f(s['evaluated'], '.0f'):>6}/{s['prompt_tokens']:<3}{_f(s['over_llama_q8_cold'], '.2f'):>10}"
          f"{_f(s['over_llama_same_case'], '.2f'):>12}{_f(s['over_qwen_alone'], '.2f'):>7}"
          f"{_f(s.get('dllm_p50_s'), '.2f'):>8}\n")
    w(f"  p50 over {args.calls} calls; prompt ms: to the first token (the prompt pass and one sampling); decode: "
      f"between tokens; evaluated/prompt: prompt tokens computed / sent (the rest from llama.cpp's cache);\n"
      f"  /llama q8: total over llama.cpp q8_0 cold; /llama case: over llama.cpp q8_0 in the same typing case; "
      f"/qwen: the ensemble over Qwen alone in the same case;\n"
      f"  dllm s: the ensemble's diffusion stage (p50); fim-lsp's cold rows run with prefixReuse off (nothing kept), "
      f"its typed rows with it on\n")


def print_sampler(costs: list[Any], decode_ms: float | None, out: Any = None) -> None:
    w = (out or sys.stdout).write
    w("\ntop-p cut per decode step (one row of the vocabulary's logits, at the server's temperature and top-p; p50 ms)\n")
    w(f"{'logits':<44}{'nucleus':>8}{'decided by':>12}{'sorted':>8}{'engine':>8}{'static':>8}{'sorted/engine':>14}"
      f"{'sampler':>9}\n")
    for c in costs:
        w(f"{c.label:<44}{c.nucleus_tokens:>8}{'top-k' if c.by_candidates else 'radix':>12}{c.sorted_ms:>8.2f}"
          f"{c.engine_ms:>8.2f}{c.branch_free_ms:>8.2f}{c.sorted_ms / c.engine_ms:>14.1f}{c.sampler_ms:>9.2f}\n")
        if decode_ms:
            w(f"  saving per decode step: {c.sorted_ms - c.engine_ms:.2f} ms of fim-lsp's {decode_ms:.1f} ms "
              f"(fp32 decode p50 above): {(c.sorted_ms - c.engine_ms) / decode_ms:.1%}\n")
    w("  sorted: the floor by a full sort (what the engine ran before); engine: the eager sampler's way (top-256 "
      "candidates, a radix select for the rows they do not decide);\n  static: the static path's (radix select, "
      "no branch); sampler: the eager sampler's whole step (temperature, cut, softmax, draw)\n")


def _models(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path]:
    if args.ar_model:
        return Path(args.ar_model), Path(args.dllm_model)
    from .models import write_random

    t = time.perf_counter()
    ck = write_random(args.models_dir or tmp, args.random_config, args.data_dir if args.data_dir.is_dir() else None)
    print(f"random {ck.shape} checkpoints in {ck.ar.parent} ({time.perf_counter() - t:.0f} s), "
          f"tokenizer: {ck.tokenizer}", file=sys.stderr)
    return ck.ar, ck.dllm


def run(args: argparse.Namespace, tmp: Path) -> int:
    import torch
    from transformers import AutoTokenizer

    from fim_lsp.engine.ensemble import Engine

    from . import llamacpp
    from .report import machine
    from .sampler_cost import sharpened, top_p_cost
    from .server_variant import server_config

    torch.set_num_threads(args.threads)
    ar, dllm = _models(args, tmp)
    tok = AutoTokenizer.from_pretrained(str(ar))
    prompts = make_prompts(tok, args.data_dir, args.context_tokens)
    rows = [r for r in ROWS if r.key in args.rows]
    meta: dict[str, Any] = {"command": "python -m fim_lsp.bench.cpu " + " ".join(sys.argv[1:]),
                            "machine_at_start": machine(), "prompt_tokens": len(prompts.ids), "load_seconds": {}}
    print(f"CPU: {meta['machine_at_start'].get('cpu_model')}, {meta['machine_at_start']['cpus']} cores; "
          f"features: {meta['machine_at_start']['cpu_features']}", file=sys.stderr)
    base = server_config(str(ar), str(dllm), "cpu", "float32")
    sampling = (base.temperature, base.top_p)

    runners: dict[Row, Any] = {}
    skipped = llamacpp.missing() if any(r.runner == "llama.cpp" for r in rows) else None
    if skipped:
        print(f"note: {skipped}", file=sys.stderr)
        meta["llama_cpp"] = skipped
        rows = [r for r in rows if r.runner != "llama.cpp"]
    elif any(r.runner == "llama.cpp" for r in rows):
        from .gguf_export import cached

        meta["llama_cpp"] = llamacpp.system_info()
        by_weights: dict[str, Any] = {}
        for r in rows:
            if r.runner == "llama.cpp" and r.weights not in by_weights:
                t = time.perf_counter()
                path = cached(ar, r.weights, (args.models_dir / "gguf") if args.models_dir else None)
                meta["load_seconds"][f"gguf {r.weights} (converted, or reused)"] = time.perf_counter() - t
                crash = llamacpp.extra_bufts_crash(path, prompts.ids, args.threads)
                if crash:
                    # a peer that crashes is no row: time it as a user's stock build runs it instead
                    meta.setdefault("llama_cpp_without_extra_buffer_types", {})[r.weights] = crash
                    print(f"note: llama.cpp {r.weights}: {crash}; its rows run without them "
                          f"(use_extra_bufts off: its plain q8_0 / f32 kernels)", file=sys.stderr)
                by_weights[r.weights] = llamacpp.LlamaCpp(path, args.threads, extra_bufts=crash is None)
                print(f"llama.cpp {r.weights}: {path}", file=sys.stderr)
            if r.runner == "llama.cpp":
                runners[r] = by_weights[r.weights]
    engines: dict[tuple[str, str, str], Any] = {}
    for r in rows:
        if r.runner != "fim-lsp":
            continue
        key = (r.models, r.weights, r.compile, r.decode_weights)
        if key not in engines:
            t = time.perf_counter()
            engine = Engine(base.replace(models=r.models, dtype=r.weights, compile=r.compile,
                                         decode_weights=r.decode_weights))
            engine.load()
            meta["load_seconds"][f"fim-lsp {'/'.join(key)}"] = time.perf_counter() - t
            print(f"loaded fim-lsp {'/'.join(key)} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            engines[key] = engine
        runners[r] = engines[key]

    def one(r: Row, i: int) -> Call:
        if r.runner == "llama.cpp":
            return llama_call(runners[r], r, prompts, args, sampling, i)
        return fim_call(runners[r], r, prompts, args, i, base.dllm_lengths_single_line)

    for r in rows:
        one(r, -1)  # untimed: lazy setup, first-call compiles
    calls: list[Call] = []
    for i in range(args.calls):
        for r in rows:
            calls.append(one(r, i))
            c = calls[-1]
            print(f"#{i} {r.key}: {c.total_s:.3f} s, prompt {_f(c.prompt_s, '.3f')} s, decode "
                  f"{_f(c.decode_ms_per_token, '.1f')} ms/token, {c.tokens} tokens", file=sys.stderr)
    summary = summarize(calls, rows)
    print(f"\nfim-lsp vs llama.cpp on {meta['machine_at_start'].get('cpu_model')} "
          f"({meta['machine_at_start']['cpus']} cores, {args.threads} threads each; "
          f"CPU features: {meta['machine_at_start']['cpu_features']}); {len(prompts.ids)} prompt tokens, "
          f"{args.tokens} generated tokens, sampling temperature {sampling[0]} top-p {sampling[1]}")
    if "llama_cpp" in meta:
        print(f"llama.cpp: {meta['llama_cpp']}")
    for weights, crash in meta.get("llama_cpp_without_extra_buffer_types", {}).items():
        print(f"llama.cpp {weights}: {crash}; its rows ran without extra buffer types")
    print_table(summary, args)

    # the top-p cut: on the random checkpoint's own logits, and sharpened to a trained model's nucleus
    engine = next((e for k, e in engines.items() if k == ("qwen", "float32", "auto", "auto")), None)
    costs = []
    if engine is not None:
        with torch.inference_mode():
            logits = engine.ar.model(torch.tensor([prompts.ids])).logits[0, -1, : len(tok)]
        costs = [top_p_cost("the random checkpoint's logits", logits, *sampling),
                 top_p_cost("sharpened to a nucleus of <= 40 tokens", sharpened(logits, *sampling, 40), *sampling)]
        print_sampler(costs, summary.get("qwen-fp32", {}).get("decode_ms_per_token_p50"))
    meta["machine_at_end"] = machine()
    for k, v in meta["load_seconds"].items():
        print(f"  load: {k}: {v:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "args": {k: str(v) for k, v in vars(args).items()},
                                         "rows": [asdict(r) for r in rows], "summary": summary,
                                         "calls": [asdict(c) for c in calls],
                                         "top_p": [asdict(c) for c in costs]}, indent=1))
        print(f"\nwrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fim-bench-cpu-") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
