"""Printing the tables and writing the JSON."""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from .measure import STAGES
from .stats import SERVER_TARGETS, TARGETS, GroupReport

CHECK_TEXT = {
    "editor_dllm_passes": "editor: diffusion forward passes per completion",
    "editor_over_qwen": "editor: ensemble latency over Qwen alone (p50)",
    "editor_score_share": "editor: scoring time over total",
}


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


# The instruction sets CPU inference speed turns on: AVX-512 (and its VNNI / BF16 parts) and AMX run
# bf16 and int8 matrix products natively; most laptops have AVX2 and FMA only.
FEATURES = ("avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
            "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_features(cpuinfo: str | None = None) -> str:
    """'avx2 fma ...; AVX-512: no; AMX: no' from /proc/cpuinfo's flags (None where it cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "unknown (no /proc/cpuinfo)"
    from fim_lsp.engine.cpu_features import cpu_dtype_name, parse_flags

    flags = parse_flags(cpuinfo)
    have = [f for f in FEATURES if f in flags]
    yes = {True: "yes", False: "no"}
    return (f"{' '.join(have) or 'none of ' + ' '.join(FEATURES[:3])}; "
            f"AVX-512: {yes[any(f.startswith('avx512') for f in flags)]}; AMX: {yes[any(f.startswith('amx') for f in flags)]}; "
            f"dtype auto: {cpu_dtype_name(flags)}")


def machine() -> dict[str, Any]:
    """Where the figures came from. The load average matters: these machines are shared."""
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "python": sys.version.split()[0],
                            "torch": torch.__version__, "cpus": os.cpu_count(),
                            "torch_threads": torch.get_num_threads()}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if hasattr(os, "getloadavg"):
        info["loadavg"] = list(os.getloadavg())
    info["cpu_features"] = cpu_features()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                                  if ln.startswith("Model name")), None)
    except (OSError, subprocess.SubprocessError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def print_group(rep: GroupReport, out: TextIO | None = None) -> None:
    out = out or sys.stdout  # looked up per call, so a redirected stdout is honoured
    first = next(iter(rep.summaries.values()), None)
    w = out.write
    w(f"\n== context {rep.context_tokens} tokens, hole {rep.hole_tokens} tokens, "
      f"{first.n if first else 0} completions per variant ==\n")
    w(f"{'variant':<22}{'stage':<7}{'p50 s':>9}{'p90 s':>9}{'passes':>8}{'positions':>11}{'tokens':>8}{'peak MB':>9}{'abs MB':>8}\n")
    for name, s in rep.summaries.items():
        for stage in STAGES:
            st = s.stages.get(stage)
            if st is None:
                continue
            w(f"{name:<22}{stage:<7}{_f(st.p50_s):>9}{_f(st.p90_s):>9}{_f(st.forward_passes, 1):>8}"
              f"{_f(st.positions, 0):>11}{_f(st.tokens, 1):>8}{_f(st.peak_mb, 0):>9}\n")
        w(f"{name:<22}{'total':<7}{_f(s.total_p50_s):>9}{_f(s.total_p90_s):>9}{'':>8}{'':>11}{'':>8}"
          f"{_f(s.total_peak_mb, 0):>9}{_f(s.abs_peak_mb, 0):>8}\n")
    for name, s in rep.summaries.items():
        if s.qwen_decode_ms_per_token_p50 is not None:
            w(f"{name}: Qwen decode {_f(s.qwen_decode_ms_per_token_p50, 2)} ms/token (p50; its time after the "
              f"prompt pass over its forward passes after the first)\n")
        if s.dllm_score_p50_s is not None:
            w(f"{name}: the diffusion candidates scored beside Qwen in {_f(s.dllm_score_p50_s)} s (p50; inside the "
              f"dllm stage; the score stage scores the rest after Qwen's last token)\n")
    if not all(s.hooked for s in rep.summaries.values()):
        w("  compiled engine: forward passes are the engine's own counts (scoring's unknown), positions unknown: "
          "hooks would force recompiles and never fire inside a CUDA graph replay\n")
    alone = ", ".join(f"{k[:-6].replace('_', '-')} p50 {_f(v)} s" for k, v in rep.ratios.items()
                      if k.endswith("_p50_s"))
    w(f"\nratios, measured in this run (/qwen: over the Qwen alone in the same configuration, its generation: "
      f"{alone})\n")
    w(f"{'variant':<22}{'/qwen':>7}{'score%':>8}{'/exact':>8}{'dllm t':>8}{'dllm fp':>8}{'score t':>8}"
      f"{'score fp':>9}{'tok agree':>10}{'dllm same':>10}{'win same':>9}\n")
    for name, r in rep.ratios.items():
        if not isinstance(r, dict):
            continue
        a = rep.agreement.get(name, {})
        share = r.get("score_share_of_total")
        w(f"{name:<22}{_f(r.get('ensemble_over_qwen_alone'), 2):>7}{_f(share * 100 if share is not None else None, 1):>8}"
          f"{_f(r.get('total_over_exact'), 2):>8}{_f(r.get('dllm_time_over_exact'), 2):>8}"
          f"{_f(r.get('dllm_passes_over_exact'), 2):>8}{_f(r.get('score_time_over_exact'), 2):>8}"
          f"{_f(r.get('score_passes_over_exact'), 2):>9}{_f(a.get('dllm_token_share'), 2):>10}"
          f"{_f(a.get('dllm_exact_share'), 2):>10}{_f(a.get('winner_exact_share'), 2):>9}\n")
    w("  peak MB: memory above the pre-call level, highest in the stage; abs MB: the process's peak (CPU: RSS, "
      "all loaded weights included)\n")
    w("  /qwen: total p50 over Qwen alone; score%: scoring time over total; /exact, dllm t, score t: p50 time "
      "over the exact path's;\n  fp: mean forward passes over the exact path's; tok agree: diffusion output "
      "tokens equal to the exact path's; dllm/win same: identical candidate / winner\n")
    if rep.checks:
        w("targets (issue 6; they apply to random real-shape weights, CPU, 256-token context, 16-token hole)\n")
        for key, c in rep.checks.items():
            w(f"  {CHECK_TEXT[key]}: {_f(c['measured'], 3)} (target <= {TARGETS[key]}) {verdict(c)}\n")


def verdict(check: dict[str, Any]) -> str:
    if check["measured"] is None:
        return "NOT met (not measured)"
    return "met" if check["met"] else "NOT met"


def server_check_text(key: str) -> str:
    t = SERVER_TARGETS[key]
    what = {"total_p50_s": "latency p50 s", "total_p90_s": "latency p90 s",
            "over_qwen": "ensemble over Qwen alone (p50)"}[t.figure]
    return f"server, {t.context_tokens}-token context: {what}"


def print_server_targets(checks: dict[str, dict[str, Any]], decode_ms: dict[int, float | None],
                         load_s: dict[str, float], out: TextIO | None = None) -> None:
    """Issue 9's targets for the server variant (meant for an H100, bf16), each with its verdict."""
    w = (out or sys.stdout).write
    w("\ntargets (issue 9; the server variant, meant for an H100 in bf16)\n")
    for key, c in checks.items():
        w(f"  {server_check_text(key)}: {_f(c['measured'], 3)} (target <= {c['limit']}) {verdict(c)}\n")
    for n, ms in decode_ms.items():
        w(f"  server, {n}-token context: Qwen decode ms/token (p50): "
          f"{_f(ms, 2) if ms is not None else 'not reported by the engine (no qwen_prefill timing)'}\n")
    for models, seconds in load_s.items():
        w(f"  load, models={models} (compile and capture included when compiled): {seconds:.1f} s\n")


def to_json(meta: dict[str, Any], variants: list[Any], samples: list[Any], groups: list[GroupReport]) -> str:
    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, Path):
            return str(x)
        return x

    doc = {
        "meta": meta,
        "variants": [{"name": v.name, "kind": v.kind, "changes": v.changes, "config": asdict(v.config)}
                     for v in variants],
        "groups": [asdict(g) for g in groups],
        "samples": [asdict(s) for s in samples],
    }
    return json.dumps(clean(doc), indent=1)
