"""python -m fim_lsp.bench.cpu on the tiny checkpoints: llama.cpp's rows (when the optional extra is
installed) beside fim-lsp's, the prompt cache really reused while typing, the ratios from one run, and
without the extra a message that says how to install it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fim_lsp.bench.cpu import ROWS, Call, summarize
from fim_lsp.bench.report import cpu_features

ROOT = Path(__file__).resolve().parents[1]


def bench_args(tiny: Path, data: Path, rows: str, out: Path) -> list[str]:
    return ["--ar-model", str(tiny / "ar"), "--dllm-model", str(tiny / "dllm"), "--data-dir", str(data),
            "--context-tokens", "64", "--calls", "1", "--rows", rows, "--json", str(out)]


def test_llama_cpp_rows_beside_fim_lsp(tiny_models: Path, shared_data: Path, tmp_path: Path, capsys):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install -e '.[llamacpp]'")
    from transformers import AutoTokenizer

    from fim_lsp.bench.cpu import main, make_prompts

    out = tmp_path / "cpu.json"
    rows = "llama-q8,llama-f32,llama-q8-last3,llama-q8-typed,qwen-fp32,qwen-fp32-typed,ensemble-fp32"
    assert main(bench_args(tiny_models, shared_data, rows, out)) == 0
    doc = json.loads(out.read_text())
    calls = {c["row"]: c for c in doc["calls"]}
    prompts = make_prompts(AutoTokenizer.from_pretrained(tiny_models / "ar"), shared_data, 64)
    n = len(prompts.ids)
    for key in ("llama-q8", "llama-f32", "llama-q8-last3", "llama-q8-typed"):
        assert calls[key]["tokens"] == 8
    # llama.cpp's own counters: cold evaluates the prompt, the cached cases only what changed
    assert calls["llama-q8"]["evaluated"] == n and calls["llama-q8-last3"]["evaluated"] == 3
    same = next(i for i, (a, b) in enumerate(zip(prompts.ids_before, prompts.ids_typed)) if a != b)
    assert calls["llama-q8-typed"]["evaluated"] == len(prompts.ids_typed) - same
    s = doc["summary"]
    assert s["llama-q8"]["over_llama_q8_cold"] == 1.0
    assert s["qwen-fp32-typed"]["over_llama_same_case"] == pytest.approx(
        s["qwen-fp32-typed"]["total_p50_s"] / s["llama-q8-typed"]["total_p50_s"])
    assert s["ensemble-fp32"]["over_qwen_alone"] == pytest.approx(
        s["ensemble-fp32"]["total_p50_s"] / s["qwen-fp32"]["total_p50_s"])
    printed = capsys.readouterr().out
    assert "AVX-512:" in printed and "AMX:" in printed and "llama.cpp q8_0, one character typed" in printed
    assert {c["label"] for c in doc["top_p"]} and all(c["sorted_ms"] > 0 for c in doc["top_p"])


def test_without_the_extra_the_rows_say_how_to_install(tiny_models: Path, shared_data: Path, tmp_path: Path):
    """llama_cpp made unimportable in a fresh interpreter (as on a machine without the extra)."""
    out = tmp_path / "cpu.json"
    code = ("import sys; sys.modules['llama_cpp'] = None; from fim_lsp.bench.cpu import main; "
            f"sys.exit(main({bench_args(tiny_models, shared_data, 'llama-q8,qwen-fp32', out)!r}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pip install -e '.[llamacpp]'" in proc.stderr
    doc = json.loads(out.read_text())
    assert [r["key"] for r in doc["rows"]] == ["qwen-fp32"] and "pip install" in doc["meta"]["llama_cpp"]
    assert "fim-lsp qwen, fp32, int8 decode" in proc.stdout and "llama.cpp q8_0, cold" not in proc.stdout


def test_ratios_are_taken_within_the_run():
    def call(row: str, total: float) -> Call:
        return Call(row, 0, total, 0.1, 10.0, 8, 259, 259)

    calls = [call("llama-q8", 2.0), call("llama-q8", 4.0), call("llama-q8-typed", 1.0), call("qwen-fp32", 4.5),
             call("qwen-fp32-typed", 3.0), call("ensemble-fp32", 9.0), call("ensemble-fp32-typed", 6.0),
             call("qwen-bf16", 1.0), call("ensemble-bf16", 3.0)]
    s = summarize(calls, ROWS)
    assert s["llama-q8"]["total_p50_s"] == 3.0 and "llama-f32" not in s
    assert s["qwen-fp32"]["over_llama_q8_cold"] == 1.5
    assert s["qwen-fp32-typed"]["over_llama_same_case"] == 3.0 and s["qwen-fp32-typed"]["over_qwen_alone"] is None
    assert s["ensemble-fp32"]["over_qwen_alone"] == 2.0 and s["ensemble-fp32-typed"]["over_qwen_alone"] == 2.0
    assert s["ensemble-bf16"]["over_qwen_alone"] == 3.0  # over the Qwen row of its own weights


def test_cpu_features_name_avx512_and_amx():
    xeon = "processor: 0\nflags\t\t: fpu avx2 fma f16c avx512f avx512bw avx512_bf16 amx_tile amx_bf16 amx_int8\n"
    epyc = "processor: 0\nflags\t\t: fpu sse4_2 avx avx2 fma f16c\n"
    assert cpu_features(xeon) == "avx2 fma f16c avx512f avx512bw avx512_bf16 amx_tile amx_int8 amx_bf16; " \
                                 "AVX-512: yes; AMX: yes; dtype auto: bfloat16"
    assert cpu_features(epyc) == "avx2 fma f16c; AVX-512: no; AMX: no; dtype auto: float32"


def test_the_lever_row_runs_one_hole_length_and_the_next_row_the_servers(tiny_models: Path, shared_data: Path):
    """The rows share one engine: the lever row's single-line lengths apply to its own calls only."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from fim_lsp.bench.cpu import fim_call, make_prompts
    from fim_lsp.bench.server_variant import server_config
    from fim_lsp.engine.ensemble import Engine

    base = server_config(str(tiny_models / "ar"), str(tiny_models / "dllm"), "cpu", "float32")
    engine = Engine(base)
    engine.load()
    prompts = make_prompts(AutoTokenizer.from_pretrained(tiny_models / "ar"), shared_data, 64)
    args = SimpleNamespace(tokens=4, context_tokens=64)
    rows = {r.key: r for r in ROWS}
    seen = []
    for key in ("ensemble-bf16-len8", "ensemble-bf16", "ensemble-bf16-len8-typed"):
        call = fim_call(engine, rows[key], prompts, args, 0, base.dllm_lengths_single_line)
        assert call.dllm_s is not None
        seen.append(engine.config.dllm_lengths_single_line)
    assert base.dllm_lengths_single_line != (8,)
    assert seen == [(8,), base.dllm_lengths_single_line, (8,)]


def test_llama_cpp_loads_without_its_extra_buffer_types_where_they_crash(tiny_models: Path, tmp_path: Path):
    """The switch really reaches llama.cpp's model parameters, and is undone after the load."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install -e '.[llamacpp]'")
    import llama_cpp.llama_cpp as low

    from fim_lsp.bench import gguf_export, llamacpp

    path = gguf_export.convert(tiny_models / "ar", tmp_path / "q8.gguf", "q8_0")
    default = low.llama_model_default_params
    plain = llamacpp.LlamaCpp(path, 1, n_ctx=128, extra_bufts=False)
    assert plain.llm.model_params.use_extra_bufts is False
    assert low.llama_model_default_params is default
    assert llamacpp.LlamaCpp(path, 1, n_ctx=128).llm.model_params.use_extra_bufts is True


def test_a_peer_that_crashes_is_named_by_how_it_died(tmp_path: Path, monkeypatch):
    """A real child process killed by SIGSEGV (a shell standing in for the interpreter, since no
    llama.cpp build crashes on demand) and one that exits with an error: the bench goes on, told why."""
    from fim_lsp.bench import llamacpp

    segv = tmp_path / "segv.sh"
    segv.write_text("#!/bin/sh\nkill -SEGV $$\n")
    segv.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(segv))
    assert llamacpp.extra_bufts_crash(tmp_path / "any.gguf", [1, 2, 3], 1).endswith("died: signal SIGSEGV")
    monkeypatch.undo()
    not_gguf = tmp_path / "not.gguf"
    not_gguf.write_bytes(b"not a gguf file")
    if llamacpp.missing() is None:
        assert llamacpp.extra_bufts_crash(not_gguf, [1, 2, 3], 1).endswith("died: exit status 1")
