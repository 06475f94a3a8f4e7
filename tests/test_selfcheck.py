"""`python -m fim_lsp.selfcheck --device cpu` on tiny checkpoints: every check that can run on a CPU
passes, and the CUDA-only ones say they were skipped rather than passing."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_selfcheck_passes_on_cpu_and_skips_what_needs_cuda(tmp_path):
    res = subprocess.run([sys.executable, "-m", "fim_lsp.selfcheck", "--device", "cpu", "--contexts", "256",
                          "--models-dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=900)
    out = res.stdout
    assert res.returncode == 0, out + res.stderr[-3000:]
    for name in ("load", "equal-256", "dual-cache", "new-shapes", "cancel", "reloads"):
        assert f"PASS {name} " in out, out
    for name in ("no-empty-graph", "memory-cap", "second-gpu"):
        assert f"SKIP {name} " in out and "CUDA only" in out, out
    assert "FAIL" not in out and out.rstrip().endswith("all checks passed")
