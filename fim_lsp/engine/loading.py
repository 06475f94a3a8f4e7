"""Model loading: Hub ids or local dirs, the HF cache, offline mode, readable failures."""
from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .cpu_features import cpu_dtype_name, cpu_flags

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


class ModelLoadError(RuntimeError):
    """A model that could not be loaded; the message is meant for a person, not a traceback."""


@dataclass
class LoadedModel:
    name: str  # what the user asked for: Hub id or path
    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers tokenizer
    device: torch.device
    dtype: torch.dtype


def resolve_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on a GPU; on a CPU bf16 where it multiplies bf16 natively (AVX-512 BF16 or AMX-BF16),
    else fp32 (cpu_features.py)."""
    if name == "auto":
        if device.type == "cpu":
            return DTYPES[cpu_dtype_name(cpu_flags())]
        return torch.bfloat16
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16") from None


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _explain(name: str, role: str, err: BaseException) -> str:
    local = Path(name).expanduser()
    if _is_local(name):
        where = f"the local directory {local.resolve()}" + ("" if local.exists() else " (it does not exist)")
        fix = (f"check that {local} holds config.json, the weights (*.safetensors) and the tokenizer files, "
               f"or pass a Hub id instead")
    else:
        offline = os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True") or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
        where = f"the Hugging Face cache {_hub_cache()}" + (" (offline mode is on)" if offline else " and the Hub")
        fix = (f"on a machine with network access run `hf download {name}` "
               f"(or set HF_HOME to a cache that has it), or pass a local directory with --{role}-model")
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"could not load the {role} model {name!r}: looked in {where}. Fix: {fix}. ({first_line})"


def _is_local(name: str) -> bool:
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~"))


def _cached(name: str) -> bool:
    """True when the Hub id's config is already in the HF cache, so loading needs no network."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # a malformed id: let from_pretrained say what is wrong
        return False


def load_model(name: str, role: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Load tokenizer + causal-LM weights. `role` ("ar", "dllm", "scorer") only shapes the error text.

    sdpa attention is forced: flash-attention-2 ignores a 4-D mask and stays causal, which would
    silently break the diffusion model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # A cached Hub model loads with no network at all: no retries, no waiting on a dead link.
    offline = {"local_files_only": True} if not _is_local(name) and _cached(name) else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **offline)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, attn_implementation="sdpa", **offline)
    except (OSError, ValueError, EnvironmentError) as err:
        raise ModelLoadError(_explain(name, role, err)) from None
    model.to(device).eval()
    model.requires_grad_(False)
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, device=device, dtype=dtype)


def quiet_transformers() -> None:
    """No progress bars or warnings from transformers in a tool's output (the bench, the selfcheck)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def cache_kwarg(model: Any) -> str:
    """transformers renamed the forward's past_key_values to cache during 5.x; accept both."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(out: Any) -> Any:
    return getattr(out, "cache", None) or out.past_key_values


def mask_token_id(tokenizer: Any, override: str | None = None, model_name: str = "") -> int:
    """The diffusion mask id: --mask-token, else the tokenizer's mask_token, else the string <M>."""
    for token in (override, getattr(tokenizer, "mask_token", None), "<M>"):
        tid = special_id(tokenizer, token) if token else None
        if tid is not None:
            return tid
    tried = ", ".join(repr(t) for t in (override, getattr(tokenizer, "mask_token", None), "<M>") if t)
    raise ModelLoadError(
        f"the diffusion model {model_name!r} has no mask token: tried {tried}. "
        f"Fix: pass --mask-token with the tokenizer's mask string (Open-dCoder trained with '<M>', id 151665).")


def special_id(tokenizer: Any, token: str) -> int | None:
    """Id of a special token by its string, or None when this tokenizer lacks it. Looked up among the
    added tokens first: get_vocab() rebuilds a 151k-entry dict on every call (~0.1 s each)."""
    added = tokenizer.added_tokens_encoder
    if token in added:
        return int(added[token])
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid == tokenizer.unk_token_id:
        return None
    return int(tid)


def encode(tokenizer: Any, text: str) -> list[int]:
    """Ids of one text segment. Control-token strings typed in user code stay plain text, so a file
    that mentions '<|endoftext|>' cannot end a prompt early, nor one that mentions '<|fim_middle|>' or
    '<|file_sep|>' (or Java's `List<M>`, Open-dCoder's mask) open a hole or a file of its own.

    `split_special_tokens` covers only the tokens marked special; Qwen's FIM and repo tokens are
    added tokens that are not, and the tokenizer matches those in any text. So the text is cut inside
    each such string (after its first character) and the pieces are tokenized on their own."""
    if not text:
        return []
    added = getattr(tokenizer, "added_tokens_encoder", None) or {}
    cuts = [0]
    if added and any(token in text for token in added):
        pattern = re.compile("|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)))
        cuts += [m.start() + 1 for m in pattern.finditer(text)]
    cuts.append(len(text))
    ids: list[int] = []
    for start, end in zip(cuts, cuts[1:]):
        if end > start:
            ids += tokenizer(text[start:end], add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return ids


def decode_whole(tokenizer: Any, ids: list[int]) -> tuple[list[int], str]:
    """(ids, text) with trailing tokens dropped while they end inside a multi-byte character: a
    generation cut by its budget can stop between the bytes of one character, and a candidate's text,
    tokens and perplexity must describe the same whole characters."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    # A UTF-8 character is at most 4 bytes, so a cut leaves at most 3 of them (3 byte tokens at most).
    # Text that still ends in U+FFFD after dropping those is invalid bytes the model wrote: keep it.
    for cut in range(1, min(3, len(ids)) + 1):
        if not text.endswith("\ufffd"):
            break
        shorter = tokenizer.decode(ids[:-cut], skip_special_tokens=True)
        if not shorter.endswith("\ufffd"):
            return ids[:-cut], shorter
    return ids, text
