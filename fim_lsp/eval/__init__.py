"""Benchmark harness: HumanEval-Infilling and SantaCoder-FIM over the engine (`python -m fim_lsp.eval`)."""
