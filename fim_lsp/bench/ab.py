"""python -m fim_lsp.bench.ab: the bench on two versions of the code, in turns, as ratios from one run.

"Nothing got slower" can't be read off two runs on a shared machine hours apart. This runs
`python -m fim_lsp.bench ARGS` from two commits (each extracted with `git archive`, so that editing the
checkout meanwhile changes nothing), one after the other, for `--rounds` rounds, swapping which goes first each round, on the same
checkpoint directory; then it pools each side's samples and prints every variant's p50 (total and per
stage) before and after, and after / before.

  python -m fim_lsp.bench.ab --before 133334b --rounds 3 -- \\
      --random-config real --models-dir /tmp/bench-real --variants server --context-tokens 256 --samples 2

The earlier commit's bench must accept the same ARGS."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fim_lsp.percentile import percentile

from .models import ROOT

SIDES = ("before", "after")


@dataclass
class Row:
    variant: str
    stage: str  # "total" or a stage name (qwen, dllm, score)
    n_before: int
    n_after: int
    before_p50_s: float | None
    after_p50_s: float | None

    @property
    def ratio(self) -> float | None:
        if not self.before_p50_s or self.after_p50_s is None:
            return None
        return self.after_p50_s / self.before_p50_s


def extract(rev: str, into: Path) -> Path:
    """The tree of `rev` (committed files only) in `into`."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_bench(tree: Path, bench_args: list[str], out: Path) -> float:
    """One bench process from `tree` (its own fim_lsp first on the path); returns its wall seconds."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fim_lsp.bench", *bench_args, "--json", str(out)], cwd=tree,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the bench from {tree} exited {proc.returncode}:\n{proc.stdout[-3000:]}")
    return time.perf_counter() - start


def pool(paths: list[Path]) -> dict[str, dict[str, list[float]]]:
    """variant -> stage ("total" or a stage) -> seconds of every sample in these bench JSONs."""
    out: dict[str, dict[str, list[float]]] = {}
    for path in paths:
        for s in json.loads(path.read_text())["samples"]:
            stages = out.setdefault(s["variant"], {})
            stages.setdefault("total", []).append(s["total_seconds"])
            for name, st in s["stages"].items():
                stages.setdefault(name, []).append(st["seconds"])
    return out


def compare(before: dict[str, dict[str, list[float]]], after: dict[str, dict[str, list[float]]]) -> list[Row]:
    rows = []
    for variant in sorted(set(before) | set(after)):
        b, a = before.get(variant, {}), after.get(variant, {})
        for stage in ["total", *sorted((set(b) | set(a)) - {"total"})]:
            xb, xa = b.get(stage, []), a.get(stage, [])
            rows.append(Row(variant, stage, len(xb), len(xa), percentile(xb, 0.5) if xb else None,
                            percentile(xa, 0.5) if xa else None))
    return rows


def table(rows: list[Row]) -> str:
    def f(v: float | None, digits: int = 2) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    lines = ["| variant | stage | before p50 s | after p50 s | after / before | samples (before, after) |",
             "|---|---|---:|---:|---:|---|"]
    for r in rows:
        ratio = f(r.ratio)
        if r.stage == "total":
            ratio = f"**{ratio}**"
        lines.append(f"| {r.variant} | {r.stage} | {f(r.before_p50_s)} | {f(r.after_p50_s)} | {ratio} | "
                     f"{r.n_before}, {r.n_after} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    bench_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, bench_args = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="python -m fim_lsp.bench.ab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="a commit of this repository (run from a git archive of it)")
    p.add_argument("--after", default="HEAD", help="the other commit (default HEAD; uncommitted changes are not run)")
    p.add_argument("--rounds", type=int, default=3, help="bench runs per side, in turns")
    p.add_argument("--json", type=Path, help="write both sides' figures here")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    if not any(a == "--data-dir" or a.startswith("--data-dir=") for a in bench_args):
        # the earlier tree sits in a temp dir, where the bench's default (../shared/data) is not
        bench_args += ["--data-dir", str(ROOT.parent / "shared" / "data")]
    return args, bench_args


def main(argv: list[str] | None = None) -> int:
    args, bench_args = parse_args(argv)
    revs = {side: subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", getattr(args, side)], check=True,
                                 capture_output=True, text=True).stdout.strip() for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="fim-ab-") as tmp:
        trees = {side: extract(revs[side], Path(tmp) / side) for side in SIDES}
        outs: dict[str, list[Path]] = {side: [] for side in SIDES}
        walls: dict[str, list[float]] = {side: [] for side in SIDES}
        for r in range(args.rounds):
            for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                out = Path(tmp) / f"{side}-{r}.json"
                print(f"round {r + 1}/{args.rounds}: {side} ({revs[side]})", flush=True)
                walls[side].append(run_bench(trees[side], bench_args, out))
                outs[side].append(out)
        before, after = pool(outs["before"]), pool(outs["after"])
        metas = {side: json.loads(outs[side][0].read_text())["meta"] for side in SIDES}
    rows = compare(before, after)
    print(f"\nbefore {revs['before']}, after {revs['after']}; {args.rounds} rounds in turns; "
          f"bench args: {' '.join(bench_args)}")
    print(table(rows))
    print(f"bench wall seconds per run: before {[round(w) for w in walls['before']]}, "
          f"after {[round(w) for w in walls['after']]}")
    if args.json:
        doc: dict[str, Any] = {"before": revs["before"], "after": revs["after"], "rounds": args.rounds,
                               "bench_args": bench_args, "rows": [dict(asdict(r), ratio=r.ratio) for r in rows],
                               "samples": {"before": before, "after": after}, "walls": walls, "meta": metas}
        args.json.write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
