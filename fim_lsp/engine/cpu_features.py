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


# Instructions that multiply bf16 natively (AVX-512 BF16's dot product, AMX's bf16 tiles). Without them
# torch converts every bf16 operand to fp32 first, and bf16 only adds work.
NATIVE_BF16 = ("avx512_bf16", "amx_bf16")


def cpu_dtype_name(flags: frozenset[str]) -> str:
    """What `dtype auto` picks on a CPU with these flags: bf16 where the CPU multiplies bf16 natively
    (avx512_bf16 or amx_bf16), else fp32. Measured with the rows in turns (eval/BENCHMARKS.md, "CPU:
    beside llama.cpp"): on an EPYC with AVX-512 BF16 and no AMX, bf16's prompt pass took 0.6x of fp32's
    and the ensemble 0.5x; on a Xeon with AMX, bf16's prompt pass took 356 ms where fp32's took 745."""
    return "bfloat16" if any(f in flags for f in NATIVE_BF16) else "float32"
