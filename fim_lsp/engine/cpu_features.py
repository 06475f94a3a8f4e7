"""The CPU's instruction-set flags, and the dtype `auto` picks on a CPU from them.

Read from /proc/cpuinfo (Linux; elsewhere no flags are known and the safe choice, fp32, is made)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path


def parse_flags(cpuinfo: str) -> frozenset[str]:
    """The flags of the first processor in a /proc/cpuinfo text ("flags" on x86, "Features" on Arm)."""
    line = next((ln for ln in cpuinfo.splitlines() if ln.startswith(("flags", "Features"))), "")
    return frozenset(line.split(":", 1)[1].split()) if ":" in line else frozenset()


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        return parse_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()


def cpu_dtype_name(flags: frozenset[str]) -> str:
    """What `dtype auto` picks on a CPU with these flags: bf16 only with AMX-BF16 (amx_bf16). Measured
    (eval/BENCHMARKS.md, "CPU defaults"): on a Xeon with AMX, bf16's prompt pass took 356 ms where fp32's
    took 745; on an EPYC with AVX-512 BF16 and no AMX, bf16 was 2.05x slower than fp32 on a busy machine
    and 0.81-0.85x in later runs, so the exact fp32 is kept there until a quiet machine settles it."""
    return "bfloat16" if "amx_bf16" in flags else "float32"
