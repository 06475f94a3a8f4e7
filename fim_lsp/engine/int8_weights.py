"""Int8 copies of a model's linear weights for the CPU decode step (weight-only, per output channel).

A one-token decode step on a CPU is bound by the bytes of weight it reads: 2 GB in fp32 for the 0.5B
Qwen2 (its 151936 x 896 output layer alone is 0.54 GB), where llama.cpp's q8_0 reads about a quarter of
that. As gpt-fast's int8 weight-only mode does, each weight row is stored as int8 with one scale, and
torch's `_weight_int8pack_mm` multiplies by it (activations in bf16: its fast path; fp32 activations
take a slower one). The prompt and scoring passes keep the exact weights: over hundreds of rows that
kernel is far slower than a float matrix product, and scores must be exact for the selection to be fair
(eval/BENCHMARKS.md, "int8 decode weights")."""
from __future__ import annotations

import platform
from dataclasses import dataclass

import torch

from .cpu_features import cpu_flags

ACTIVATIONS = torch.bfloat16
# torch's x86 kernel (aten/src/ATen/native/cpu/int8mm_kernel.cpp) steps through K by 16 (AVX-512) or 8
# (AVX2) with aligned vector loads and no tail: another K reads past the row (wrong sums, or a crash).
K_MULTIPLE = 16


@dataclass
class Int8Linear:
    """y = x @ (weight * scales[:, None]).T + bias, for x of any float dtype (the result has x's)."""

    weight: torch.Tensor  # int8 [out, in]
    scales: torch.Tensor  # [out], in ACTIVATIONS
    bias: torch.Tensor | None  # [out], in the exact layer's dtype

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # a fresh copy: the kernel's aligned loads need the allocator's alignment, which a view lacks
        rows = x.reshape(-1, x.size(-1)).to(ACTIVATIONS, copy=True)
        y = torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.scales).to(x.dtype)
        y = y.reshape(*x.shape[:-1], y.size(-1))
        return y if self.bias is None else y + self.bias


def quantize(linear: torch.nn.Linear) -> Int8Linear | torch.nn.Linear:
    """Symmetric per-row int8: scale = max |w| / 127 of the row (a row of zeros keeps scale 1). A layer
    whose input width the kernel cannot take (not a multiple of K_MULTIPLE) is returned as it is."""
    if linear.in_features % K_MULTIPLE:
        return linear
    w = linear.weight.detach().float()
    peak = w.abs().amax(dim=1)
    scales = torch.where(peak > 0, peak / 127, torch.ones_like(peak))
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8).contiguous()
    bias = None if linear.bias is None else linear.bias.detach()
    return Int8Linear(q, scales.to(ACTIVATIONS), bias)


def supported(device: torch.device, flags: frozenset[str] | None = None,
              machine: str | None = None) -> bool:
    """Where the int8 kernel is vectorized: a CPU with AVX-512 or AVX2 (x86), or an Arm CPU (NEON);
    elsewhere it is a scalar loop, slower than the exact weights. Not on CUDA: the decode step there
    is a graph replay, bound by launches rather than bytes, and torch's CUDA kernel was not measured."""
    if device.type != "cpu":
        return False
    flags = cpu_flags() if flags is None else flags
    machine = platform.machine().lower() if machine is None else machine
    return bool({"avx512f", "avx2"} & flags) or machine in ("aarch64", "arm64")
