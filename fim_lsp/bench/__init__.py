"""Benchmark harness: `python -m fim_lsp.bench` (see __main__.py and eval/BENCHMARKS.md)."""
