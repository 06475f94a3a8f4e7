"""Shared fixtures: tiny random-weight checkpoints built once per session, and ../shared/data."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Tests never reach the Hub: a missing model must fail fast with our message, not retry a dead link.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config: pytest.Config) -> None:
    # Tiny models gain nothing from threads, and on a 2-core machine spinning OpenMP workers
    # starve the server subprocesses and sandboxes the tests start.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _dtype_auto_is_fp32() -> Iterator[None]:
    """In this process `dtype auto` resolves as on a CPU without native bf16 (fp32), so the suite's
    numbers do not depend on the flags of the machine it runs on (bf16 where it has AVX-512 BF16 or
    AMX). Session-wide, so that module fixtures built
    before any test see the same rule as the tests that compare with them. test_cpu_defaults and
    test_int8_decode check the rules themselves, with flags of their own; servers in subprocesses keep
    the machine's."""
    from fim_lsp.engine import loading

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loading, "cpu_flags", lambda: frozenset())
        yield


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUTDIR with ar/ and dllm/, written by `python -m fim_lsp.tiny` code."""
    from fim_lsp.tiny import write_tiny

    return write_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present beside the checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def forced_lines(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Checkpoints that write "x=1\\nx=1..." whatever the document (tests/forced.py): Qwen's 8 tokens
    make two lines, the diffusion model's 4 one line, so what the server offers never depends on what a
    random model writes."""
    from forced import write_forced_pair

    return write_forced_pair(tiny_models, tmp_path_factory.mktemp("forced-lines"), rule="lines")


@pytest.fixture(scope="session")
def forced_lines_wide(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """forced_lines with a 64-wide hidden state, which the int8 decode step quantizes (forced_lines' is
    too narrow for its kernel, so its decode step stays exact)."""
    from forced import write_forced_pair

    return write_forced_pair(tiny_models, tmp_path_factory.mktemp("forced-lines-wide"), rule="lines", width=64)
