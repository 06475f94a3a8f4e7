"""`python -m fim_lsp.eval run | score | merge`: argument parsing and the three commands."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from .cceval import (BUDGET_FIELDS, CCEVAL, DEFAULT_FILE, NO_CONTEXT, SETTINGS, WITH_CONTEXT, cceval_tasks,
                     prompt_budget, write_comparison)
from .cceval_score import CCEVAL_LANGUAGES
from .data import BENCHMARKS, LANGUAGES, SANTACODER, SANTACODER_LAYOUTS, DataUnavailable, Task, load_tasks
from .identity import verdict_identity
from .metrics import summarize
from .report import headline, write_reports
from .runner import Interrupted, run_jobs, sample_jobs, shard_tasks
from .sandbox import SLOTS_PER_PROCESS, isolation
from .store import RESULTS, check_run_info, finish_shard, merge, parse_shard, read_records, shard_name
from .systems import CanonicalSystem, EnsembleSystem


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help="folder laid out like shared/data (offline); default: fetch the public copies")
    p.add_argument("--languages", default="py",
                   help=f"comma-separated: SantaCoder's ({','.join(LANGUAGES)}) or CrossCodeEval's "
                        f"({','.join(CCEVAL_LANGUAGES)}; py, ts, cs also)")
    p.add_argument("--workers", type=_workers, default=min(4, os.cpu_count() or 1),
                   help=f"parallel sandboxed test runs (1 to {SLOTS_PER_PROCESS}: one worker uid each)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per test program (default: py 3, js 5, java 20: the JVM starts slowly)")
    p.add_argument("--no-exec", action="store_true", help="skip running tests (SantaCoder EM only)")
    p.add_argument("--santacoder-layout", choices=SANTACODER_LAYOUTS, default="file",
                   help="file: the hole where it sits in the original file; open-dllm: prefix=prompt+'\\n'")
    p.add_argument("--no-progress", action="store_true")


def _workers(text: str) -> int:
    n = int(text)
    if not 1 <= n <= SLOTS_PER_PROCESS:
        raise argparse.ArgumentTypeError(f"{n}: between 1 and {SLOTS_PER_PROCESS} (one worker uid each)")
    return n


def build_parser() -> argparse.ArgumentParser:
    from fim_lsp.engine.config import add_engine_args

    parser = argparse.ArgumentParser(prog="python -m fim_lsp.eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="generate and judge", conflict_handler="resolve")
    run.add_argument("--benchmark", required=True,
                     help=f"one or more (comma-separated) of {', '.join((*BENCHMARKS, CCEVAL))}")
    run.add_argument("--system", choices=("ensemble", "canonical"), default="ensemble")
    run.add_argument("--out", default="runs/eval", help="results go to OUT/<benchmark>/")
    run.add_argument("--limit", type=int, default=None, help="first N tasks only")
    run.add_argument("--samples", type=int, default=1, help="completions per task (pass@k when > 1)")
    run.add_argument("--shard", default=None,
                     help="i/n: this process runs every n-th task from i (default under torchrun or srun: "
                          "RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS)")
    run.add_argument("--batch-size", type=int, default=1)
    run.add_argument("--cceval-file", default=DEFAULT_FILE,
                     help=f"{CCEVAL}: the JSONL under DATA_DIR/<language>/ without .jsonl "
                          "(a retrieval setting, e.g. line_completion_rg1_unixcoder_cosine_sim)")
    run.add_argument("--cceval-settings", default=",".join(SETTINGS),
                     help=f"{CCEVAL}: {NO_CONTEXT} (the local window), {WITH_CONTEXT} (plus the row's retrieved "
                          "chunks as project context), or both; results go to OUT/crosscodeeval/<setting>/")
    for name in BUDGET_FIELDS:
        run.add_argument(f"--budget-{name.replace('_', '-')}", dest=f"budget_{name}", type=int, default=None,
                         help=f"{CCEVAL}: PromptBudget.{name} of both settings (default: the server's)")
    run.add_argument("--preset", default=None, help="TOML file of option defaults (eval/seed.toml, eval/editor.toml)")
    _common(run)
    add_engine_args(run)
    # the eval's hole length also takes "oracle"; it replaces the engine's integer-only option
    run.add_argument("--dllm-length", dest="dllm_length_spec", default="auto",
                     help="oracle (ground-truth token count), N, or auto (the engine's --dllm-lengths)")
    score = sub.add_parser("score", help="judge a predictions file (task_id, completion per line)")
    score.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    score.add_argument("--predictions", required=True)
    score.add_argument("--out", required=True,
                       help="results.jsonl (appended per task: a rerun resumes), summary.json and report.md")
    _common(score)
    mg = sub.add_parser("merge", help="join a run's shard files and write its reports")
    mg.add_argument("--out", required=True, help="a run folder (OUT/<benchmark>) or OUT holding several")
    return parser


def apply_preset(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Preset values become defaults of the run subcommand, so explicit flags still win."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset")
    known, _ = pre.parse_known_args(argv)
    if not known.preset or not argv or argv[0] != "run":
        return
    with open(known.preset, "rb") as fh:
        values: dict[str, Any] = tomllib.load(fh)
    run = parser._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    dests = {a.dest for a in run._actions}
    values = {("dllm_length_spec" if k == "dllm_length" else k): v for k, v in values.items()}
    unknown = sorted(set(values) - dests)
    if unknown:
        raise SystemExit(f"{known.preset}: unknown key(s) {unknown}")
    if "dllm_lengths" in values:
        values["dllm_lengths"] = tuple(values["dllm_lengths"])
    if "dllm_length_spec" in values:
        values["dllm_length_spec"] = str(values["dllm_length_spec"])
    run.set_defaults(**values)


def _languages(args: argparse.Namespace) -> list[str]:
    return [x.strip() for x in args.languages.split(",") if x.strip()]


def _load(benchmark: str, args: argparse.Namespace) -> list[Task]:
    try:
        return load_tasks(benchmark, args.data_dir, _languages(args), args.santacoder_layout)
    except DataUnavailable as err:
        raise SystemExit(f"error: {err}") from None


def launcher_rank() -> tuple[tuple[int, int] | None, int | None]:
    """(shard, local rank) from torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or Slurm's srun (SLURM_PROCID,
    SLURM_NTASKS, SLURM_LOCALID); (None, None) for a single process."""
    for rank, world, local in (("RANK", "WORLD_SIZE", "LOCAL_RANK"), ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")):
        if rank in os.environ and world in os.environ and int(os.environ[world]) > 1:
            return (int(os.environ[rank]), int(os.environ[world])), int(os.environ.get(local, "0"))
    return None, None


def _rank_device(device: str, local_rank: int | None) -> str:
    """One GPU per process on a node: cuda (or auto with a GPU) becomes cuda:<local rank>."""
    if local_rank is None or device not in ("auto", "cuda"):
        return device
    import torch
    if not torch.cuda.is_available():
        return device
    return f"cuda:{local_rank % torch.cuda.device_count()}"


def cmd_run(args: argparse.Namespace) -> int:
    shard, local_rank = launcher_rank()
    if args.shard:
        shard = parse_shard(args.shard)  # a hand-made split wins over the launcher's
    args.device = _rank_device(args.device, local_rank)
    spec = args.dllm_length_spec
    if spec not in ("oracle", "auto") and not spec.isdigit():
        raise SystemExit(f"--dllm-length must be oracle, auto or an integer, got {spec!r}")
    benchmarks = [b.strip() for b in args.benchmark.split(",") if b.strip()]
    for b in benchmarks:
        if b not in (*BENCHMARKS, CCEVAL):
            raise SystemExit(f"unknown benchmark {b!r}; choose from {', '.join((*BENCHMARKS, CCEVAL))}")
    settings = [x.strip() for x in args.cceval_settings.split(",") if x.strip()]
    if CCEVAL in benchmarks and (not settings or set(settings) - set(SETTINGS)):
        raise SystemExit(f"--cceval-settings: one or both of {', '.join(SETTINGS)}, got {args.cceval_settings!r}")
    system = CanonicalSystem() if args.system == "canonical" else EnsembleSystem(
        args, "engine" if spec == "auto" else spec)
    for b in benchmarks:
        if b == CCEVAL:
            for setting in settings:
                tasks = _limit(_load_cceval(args, setting), args.limit)
                info = {**system.info(), "benchmark": b, "setting": setting, "cceval_file": args.cceval_file,
                        "languages": sorted({t.language for t in tasks}), "prompt_budget": dataclasses.asdict(tasks[0].budget) if tasks else None,
                        "limit": args.limit, "samples": args.samples, "execute": False,
                        **verdict_identity(tasks, [], False)}
                if _run_benchmark(Path(args.out) / b / setting, info, tasks, system, shard, args):
                    for line in write_comparison(Path(args.out) / b):
                        print(f"  {line}")
            continue
        tasks = _limit(_load(b, args), args.limit)
        languages = _languages(args) if b == SANTACODER else ["py"]
        info = {**system.info(), "benchmark": b, "languages": languages,
                "limit": args.limit, "samples": args.samples, "santacoder_layout": args.santacoder_layout,
                "timeout": args.timeout, "execute": not args.no_exec, "sandbox": isolation(),
                **verdict_identity(tasks, languages, not args.no_exec)}
        _run_benchmark(Path(args.out) / b, info, tasks, system, shard, args)
    return 0


def _limit(tasks: list[Task], limit: int | None) -> list[Task]:
    return tasks if limit is None else tasks[:limit]


def _load_cceval(args: argparse.Namespace, setting: str) -> list[Task]:
    try:
        budget = prompt_budget({name: getattr(args, f"budget_{name}") for name in BUDGET_FIELDS})
        return cceval_tasks(args.data_dir, _languages(args), args.cceval_file, setting, budget)
    except (DataUnavailable, ValueError) as err:
        raise SystemExit(f"error: {err}") from None


def _run_benchmark(out: Path, info: dict[str, Any], tasks: list[Task], system: Any,
                   shard: tuple[int, int] | None, args: argparse.Namespace) -> bool:
    """Run (or resume) one run folder; True when its reports were written (the shard that merges)."""
    check_run_info(out, info)
    path = out / shard_name(shard)
    execute = info["execute"]
    counts = run_jobs(sample_jobs(shard_tasks(tasks, shard), args.samples), system, path,
                      workers=args.workers, batch_size=args.batch_size, execute_tests=execute,
                      timeout=args.timeout, progress=not args.no_progress)
    print(f"{info['benchmark']}: {counts['ran']} run now, {counts['skipped_finished']} already finished -> {path}")
    if shard is None or shard[1] == 1:
        _finish(out, info, tasks)
        return True
    if finish_shard(out, shard):
        print(f"shard {shard[0]}/{shard[1]} finished last: merging {shard[1]} shards")
        merge(out)
        _finish(out, info, tasks)
        return True
    print(f"shard {shard[0]}/{shard[1]} done; the last shard to finish merges "
          f"(or run: python -m fim_lsp.eval merge --out {out})")
    return False


def _finish(out: Path, info: dict[str, Any], tasks: list[Task] | None = None) -> dict[str, Any]:
    records = read_records(out / RESULTS)
    summary = summarize(records, info["benchmark"])
    write_reports(out, summary, records, info)
    if info["benchmark"] != CCEVAL:  # its headline is the with/without comparison (cceval.write_comparison)
        for line in headline(summary, tasks, source="results"):
            print(f"  {line}")
    print(f"report: {out / 'report.md'}")
    return summary


def cmd_merge(args: argparse.Namespace) -> int:
    root = Path(args.out)
    # CrossCodeEval keeps one run folder per setting, a level deeper: OUT/crosscodeeval/<setting>
    runs = [root] if (root / "run.json").exists() else sorted(
        p.parent for p in (*root.glob("*/run.json"), *root.glob("*/*/run.json")))
    if not runs:
        raise SystemExit(f"no run.json under {root}")
    for out in runs:
        records = merge(out)
        print(f"{out}: {len(records)} records merged")
        _finish(out, json.loads((out / "run.json").read_text()))
    for cc in sorted({out.parent for out in runs if out.name in SETTINGS}):
        for line in write_comparison(cc):
            print(f"  {line}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from .score import score_file
    return score_file(args, _load(args.benchmark, args))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    apply_preset(parser, argv)
    args = parser.parse_args(argv)
    try:
        return {"run": cmd_run, "score": cmd_score, "merge": cmd_merge}[args.command](args)
    except Exception as err:
        from fim_lsp.engine.loading import ModelLoadError
        if isinstance(err, ModelLoadError):
            print(f"error: {err}", file=sys.stderr)
            return 2
        raise
    except Interrupted as stop:
        print(f"\ninterrupted: {stop.saved} tasks judged and saved in this run, {stop.left} not judged; "
              "rerun the same command to resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted before judging started: nothing new saved; rerun the same command to resume",
              file=sys.stderr)
        return 130
