"""What the server runs for one request, reproduced for the bench: its engine configuration (its own
defaults), its single-line decision, and a simulated stop for Qwen (random weights never stop)."""
from __future__ import annotations

from typing import Any

from fim_lsp.engine.config import EngineConfig, config_from_args
from fim_lsp.engine.loading import encode
from fim_lsp.server.context import UTF32, extract, single_line_mode, split_lines
from fim_lsp.server.main import build_parser
from fim_lsp.server.settings import ServerSettings

def server_config(ar_model: str, dllm_model: str, device: str, dtype: str,
                  overrides: dict[str, Any] | None = None) -> EngineConfig:
    """The engine configuration `fim-lsp` starts with when given only these models, device and dtype;
    `overrides` (bench options given explicitly on its command line) are passed as the server's own options."""
    argv = ["--ar-model", ar_model, "--dllm-model", dllm_model, "--device", device, "--dtype", dtype]
    for name, value in (overrides or {}).items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return config_from_args(build_parser().parse_args(argv))


def single_line(prefix: str, suffix: str, multiline: str = ServerSettings().multiline) -> bool:
    """The server's single-line decision for a cursor between `prefix` and `suffix` of one document."""
    lines = split_lines(prefix)
    settings = ServerSettings(multiline=multiline)
    # UTF-32 columns are Python string indices, so the cursor lands exactly at the end of the prefix.
    ctx = extract(prefix + suffix, len(lines) - 1, len(lines[-1]), UTF32, settings.prefix_lines,
                  settings.suffix_lines)
    return single_line_mode(ctx, settings.multiline)


def simulated_stop(tokenizer: Any, middle: str) -> int:
    """Qwen's token budget standing in for a trained model's stop: the reference middle's tokens
    (without its trailing newline) plus one for the newline that ends a single line."""
    text = middle[:-1] if middle.endswith("\n") else middle
    return len(encode(tokenizer, text)) + 1
