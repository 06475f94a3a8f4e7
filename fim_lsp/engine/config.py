"""Engine settings: one dataclass shared by the CLI, the server, the eval and the bench."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

from .rules import BOOL, CHOICE, FLOAT, INT, INTS, STR, Rule

AR_DEFAULT = "Qwen/Qwen2.5-Coder-0.5B"
DLLM_DEFAULT = "fredzzp/open-dcoder-0.5B"
ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy", "p2")
MODEL_CHOICES = ("both", "qwen", "dllm")
COMPILE_CHOICES = ("auto", "on", "off")
SCORE_MODES = ("fim", "plain")
DECODE_WEIGHTS = ("auto", "int8", "exact")


@dataclass
class EngineConfig:
    """Every knob of the engine. Field names are the CLI options (snake_case -> --kebab-case)
    and the editor settings (snake_case -> camelCase)."""

    ar_model: str = AR_DEFAULT
    dllm_model: str = DLLM_DEFAULT
    scorer_model: str | None = None  # None: the autoregressive model, shared
    models: str = "both"
    device: str = "auto"
    dtype: str = "auto"
    # sampling, shared by both generators
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int | None = None
    seed: int | None = 0
    # autoregressive
    max_new_tokens: int = 128
    # diffusion
    steps: int = 64
    alg: str = "p2"
    alg_temp: float = 0.0
    eps: float = 1e-3
    dllm_length: int | None = None  # None: try every length in dllm_lengths
    dllm_lengths: tuple[int, ...] = (8, 16, 32)
    # a single-line request (the server's mid-line mode) keeps one line: shorter holes suffice
    dllm_lengths_single_line: tuple[int, ...] = (8, 16)
    mask_token: str | None = None
    # diffusion speed options; all off is the exact reference path
    dllm_threshold: float | None = None  # also reveal every position above this confidence (Fast-dLLM)
    dllm_cache_refresh: int = 0  # >0: approximate prefix/suffix KV cache, refreshed every N steps
    dllm_steps_per_token: float | None = None  # cap steps at ceil(hole_length * this)
    # scoring
    score_mode: str = "fim"
    score_reuse: bool = True  # fim mode: score on Qwen's cached prompt (same math, fewer FLOPs)
    # Qwen's prompt pass keeps the KV cache of the longest common token prefix with the previous prompt
    # and runs over the new tokens only (the same tokens and log-probs); off: every pass runs the whole
    # prompt (for measuring what reuse saves: python -m fim_lsp.bench.typing)
    prefix_reuse: bool = True
    profile: str = "exact"  # "editor" turns the speed options on, see PROFILES
    # static-shape model passes replayed as CUDA graphs (torch.compile on CPU); auto: on for CUDA only
    compile: str = "auto"
    # compiled: the diffusion stage on its own thread (and CUDA stream) while Qwen decodes (graph replays
    # leave the interpreter free, and Qwen's one-token steps leave the GPU's multiprocessors idle); auto:
    # on for CUDA; on: also on CPU, where it only serves tests
    overlap: str = "auto"
    # device memory the captured graphs may hold: "auto" (half the memory free once the weights are
    # loaded) or a number of MB; past it the least recently used graphs are evicted (CUDA only)
    graph_memory: str | int = "auto"
    # Qwen's decode step on int8 copies of its weights (a quarter of fp32's bytes per token; the prompt
    # and scoring passes stay exact): auto: int8 on a CPU, exact elsewhere (int8 runs on a CPU only)
    decode_weights: str = "auto"

    def validate(self) -> None:
        """Raise ValueError naming the bad key (camelCase, as the editor settings spell it)."""
        for f in dataclasses.fields(self):
            ENGINE_RULES[f.name].check(camel(f.name), getattr(self, f.name))

    def replace(self, **changes: Any) -> "EngineConfig":
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new


# A profile fills in the speed options the user left at their exact-path defaults.
# editor: a 16-token hole takes 4 steps (4 tokens a step); the prefix/suffix cache is built once per 8
# steps (once per hole, as Fast-dLLM refreshes once per block); positions the model is sure of (p > 0.9)
# are revealed early, so a confident model finishes in fewer passes still. Measured on CPU at real shape,
# 8 steps put the ensemble at 2.2x Qwen alone, 4 steps at 2.0x (eval/BENCHMARKS.md).
PROFILES: dict[str, dict[str, Any]] = {
    "exact": {},
    "editor": {"dllm_threshold": 0.9, "dllm_cache_refresh": 8, "dllm_steps_per_token": 0.25},
}
# On a GPU a pass is launch-bound, not FLOP-bound: DualCache's eager partial passes save nothing there
# (eval/BENCHMARKS.md, GPU section), while a full pass of static shape replays as one CUDA graph. A
# compiled engine given dllm_cache_refresh > 0 replays DualCache's block passes as graphs too
# (dual_cache.static_dual_cache_pass); unmeasured on a GPU, so not the default.
DEVICE_PROFILES: dict[tuple[str, str], dict[str, Any]] = {("editor", "cuda"): {"dllm_cache_refresh": 0}}


# Every field's type and bounds (fim_lsp/engine/rules.py). The bounds are what a request can run
# with: past them a value breaks every completion (a seed torch refuses, steps that never end) or
# allocates without limit (hole lengths, new tokens).
_LENGTH = Rule(INTS, 1, 1024)
ENGINE_RULES: dict[str, Rule] = {
    "ar_model": Rule(STR),
    "dllm_model": Rule(STR),
    "scorer_model": Rule(STR, nullable=True),
    "models": Rule(CHOICE, choices=MODEL_CHOICES),
    "device": Rule(STR),  # whether this machine has it: server.settings.check_device
    "dtype": Rule(CHOICE, choices=("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")),
    "temperature": Rule(FLOAT, 0, 10),
    "top_p": Rule(FLOAT, 0, 1, low_open=True),
    "top_k": Rule(INT, 1, 1_000_000, nullable=True),
    "seed": Rule(INT, 0, 2**32 - 1, nullable=True),
    "max_new_tokens": Rule(INT, 1, 4096),
    "steps": Rule(INT, 1, 100_000),
    "alg": Rule(CHOICE, choices=ALGS),
    "alg_temp": Rule(FLOAT, 0, 100),
    "eps": Rule(FLOAT, 0, 1, low_open=True, high_open=True),
    "dllm_length": Rule(INT, 1, 1024, nullable=True),
    "dllm_lengths": _LENGTH,
    "dllm_lengths_single_line": _LENGTH,
    "mask_token": Rule(STR, nullable=True),
    "dllm_threshold": Rule(FLOAT, 0, 1, low_open=True, nullable=True),
    "dllm_cache_refresh": Rule(INT, 0, 100_000),
    "dllm_steps_per_token": Rule(FLOAT, 0, 100, low_open=True, nullable=True),
    "score_mode": Rule(CHOICE, choices=SCORE_MODES),
    "score_reuse": Rule(BOOL),
    "prefix_reuse": Rule(BOOL),
    "profile": Rule(CHOICE, choices=tuple(PROFILES)),
    "compile": Rule(CHOICE, choices=COMPILE_CHOICES),
    "overlap": Rule(CHOICE, choices=COMPILE_CHOICES),
    # MB; 10 TB is past any device's memory
    "graph_memory": Rule(INT, 0, 10_000_000, auto=True),
    "decode_weights": Rule(CHOICE, choices=DECODE_WEIGHTS),
}


def effective(config: EngineConfig, device_type: str = "cpu") -> EngineConfig:
    """The config with its profile's options (for this device type) applied where the user kept the
    exact default."""
    exact = EngineConfig()
    options = PROFILES[config.profile] | DEVICE_PROFILES.get((config.profile, device_type), {})
    changes = {k: v for k, v in options.items() if getattr(config, k) == getattr(exact, k)}
    return dataclasses.replace(config, **changes)


def _graph_memory(text: str) -> str | int:
    text = text.strip().lower()
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use auto or a number of MB") from None


def compile_enabled(config: EngineConfig, device_type: str) -> bool:
    return config.compile == "on" or (config.compile == "auto" and device_type == "cuda")


def int8_decode_enabled(config: EngineConfig, device_type: str) -> bool:
    return device_type == "cpu" and config.decode_weights in ("auto", "int8")


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


def _parse_lengths(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """Add every EngineConfig field as a CLI option; defaults come from the dataclass."""
    d = EngineConfig()
    g = parser.add_argument_group("engine")
    g.add_argument("--ar-model", default=d.ar_model, help="Hub id or local dir of the autoregressive FIM model")
    g.add_argument("--dllm-model", default=d.dllm_model, help="Hub id or local dir of the diffusion model")
    g.add_argument("--scorer-model", default=None, help="perplexity scorer (default: the --ar-model, shared)")
    g.add_argument("--models", choices=MODEL_CHOICES, default=d.models)
    g.add_argument("--device", default=d.device, help="auto (cuda, mps, cpu), or a torch device name")
    g.add_argument("--dtype", default=d.dtype, help="auto (bf16 on a GPU and on a CPU with AVX-512 BF16 or AMX-BF16, else fp32), float32, bfloat16, float16")
    g.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy / argmax")
    g.add_argument("--top-p", type=float, default=d.top_p)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    g.add_argument("--steps", type=int, default=d.steps)
    g.add_argument("--alg", choices=ALGS, default=d.alg)
    g.add_argument("--alg-temp", type=float, default=d.alg_temp)
    g.add_argument("--eps", type=float, default=d.eps)
    g.add_argument("--dllm-length", type=int, default=None,
                   help="hole length in tokens (default: try each of --dllm-lengths, keep the best-scored)")
    g.add_argument("--dllm-lengths", type=_parse_lengths, default=d.dllm_lengths,
                   help="comma-separated hole lengths tried when --dllm-length is not given")
    g.add_argument("--dllm-lengths-single-line", type=_parse_lengths, default=d.dllm_lengths_single_line,
                   help="hole lengths tried for a single-line request (--single-line, the server mid-line)")
    g.add_argument("--mask-token", default=None, help="mask token string when the tokenizer has none")
    g.add_argument("--score-mode", choices=SCORE_MODES, default=d.score_mode)
    g.add_argument("--no-score-reuse", dest="score_reuse", action="store_false",
                   help="score with a separate full pass instead of Qwen's cached prompt")
    g.add_argument("--no-prefix-reuse", dest="prefix_reuse", action="store_false",
                   help="run Qwen's prompt pass over the whole prompt every time, instead of over what changed "
                        "since the previous prompt")
    g.add_argument("--dllm-threshold", type=float, default=None,
                   help="also reveal every masked position whose confidence exceeds this (Fast-dLLM)")
    g.add_argument("--dllm-cache-refresh", type=int, default=d.dllm_cache_refresh,
                   help="0: exact full pass each step; N: approximate prefix/suffix KV cache, refreshed every N steps")
    g.add_argument("--dllm-steps-per-token", type=float, default=None,
                   help="cap diffusion steps at ceil(hole length * this)")
    g.add_argument("--profile", choices=tuple(PROFILES), default=d.profile,
                   help="exact: the reference path; editor: the speed options on (see README)")
    g.add_argument("--compile", choices=COMPILE_CHOICES, default=d.compile,
                   help="static-shape passes as CUDA graphs (torch.compile on CPU); auto: on for CUDA")
    g.add_argument("--overlap", choices=COMPILE_CHOICES, default=d.overlap,
                   help="with --compile: diffusion beside Qwen on a second thread and CUDA stream; auto: on for CUDA")
    g.add_argument("--graph-memory", type=_graph_memory, default=d.graph_memory,
                   help="device memory the CUDA graphs may hold: auto (half the memory free after the weights "
                        "load) or a number of MB; the least recently used graphs are evicted past it")
    g.add_argument("--decode-weights", choices=DECODE_WEIGHTS, default=d.decode_weights,
                   help="Qwen's decode step on int8 copies of its weights (CPU only; the prompt and scoring passes "
                        "stay exact); auto: int8 on a CPU, exact elsewhere")


def config_from_args(args: argparse.Namespace, base: EngineConfig | None = None) -> EngineConfig:
    base = base or EngineConfig()
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(EngineConfig) if hasattr(args, f.name)}
    return base.replace(**values)


def config_from_settings(settings: dict[str, Any], base: EngineConfig) -> EngineConfig:
    """Apply camelCase editor settings; unknown keys are ignored (the server has its own). Each value
    must fit its key's Rule: ValueError names the first that does not."""
    names = {f.name for f in dataclasses.fields(EngineConfig)}
    changes: dict[str, Any] = {}
    for key, value in settings.items():
        name = snake(key)
        if name in names:
            changes[name] = ENGINE_RULES[name].check(key, value)
    return base.replace(**changes)
