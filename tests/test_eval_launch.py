"""Multi-process runs on an existing launcher: torchrun and Slurm's srun. Each process takes its
shard from the launcher's environment, and the last to finish merges; the merged summary equals a
single process's. CPU processes on the tiny checkpoints."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fim_lsp.eval.cli import main
from test_eval_run import comparable

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not present beside the checkout")
BENCH = "humaneval-random-span-light"


def run_args(tiny: Path, out: Path) -> list[str]:
    # batch size 1: each task's sampling then depends on its seed only, not on which tasks share a batch;
    # fp32 named: `dtype auto` in the launched processes follows this machine's CPU (bf16 with AVX-512
    # BF16), in this one the suite's rule (tests/conftest.py)
    return ["-m", "fim_lsp.eval", "run", "--benchmark", BENCH, "--limit", "4", "--data-dir", str(DATA),
            "--out", str(out), "--ar-model", str(tiny / "ar"), "--dllm-model", str(tiny / "dllm"), "--device", "cpu",
            "--dtype", "float32", "--steps", "2", "--max-new-tokens", "4", "--dllm-length", "oracle", "--workers", "1",
            "--batch-size", "1", "--no-progress"]


def records(out: Path) -> list[tuple[str, list[str]]]:
    lines = (out / BENCH / "results.jsonl").read_text().splitlines()
    return sorted((r["task_id"], [c["text"] for c in r["candidates"]]) for r in map(json.loads, lines))


@pytest.fixture(scope="module")
def single(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single")
    assert main(run_args(tiny_models, out)[2:]) == 0  # in this process: the same code, one start less
    return out


def test_torchrun_two_processes_merge_to_the_single_run(tiny_models: Path, single: Path, tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    assert torchrun, "torchrun comes with torch"
    r = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", *run_args(tiny_models, tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("finished last: merging 2 shards") == 1, r.stdout
    assert sorted(p.name for p in (tmp_path / BENCH).glob("results.shard-*")) == \
        ["results.shard-0-of-2.jsonl", "results.shard-1-of-2.jsonl"]
    assert records(tmp_path) == records(single)
    assert comparable(tmp_path / BENCH / "summary.json") == comparable(single / BENCH / "summary.json")


def test_slurm_tasks_merge_to_the_single_run(tiny_models: Path, single: Path, tmp_path: Path) -> None:
    """srun is not installed here: the two tasks are started as srun starts them, one process each
    with SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID set."""
    procs = [subprocess.Popen([sys.executable, *run_args(tiny_models, tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "SLURM_PROCID": str(i), "SLURM_NTASKS": "2",
                                   "SLURM_LOCALID": str(i)})
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    assert sum("finished last: merging 2 shards" in o for o, _ in outs) == 1
    assert records(tmp_path) == records(single)
    assert comparable(tmp_path / BENCH / "summary.json") == comparable(single / BENCH / "summary.json")
