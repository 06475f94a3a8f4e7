"""Single-line mode's stop rule, on the device: stop at the first newline that follows non-blank text.

Per-token tables over the vocabulary say whether a token holds a newline, non-blank text, or a newline
after non-blank text of its own, so the decode loop checks the rule with three lookups and no sync."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def _token_texts(tokenizer: Any) -> list[str]:
    """Each id's text. Byte-level BPE (Qwen's) maps bytes to printable characters: undo that mapping
    directly, 5x faster than decoding 151k ids one by one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and type(backend.decoder).__name__ == "ByteLevel":
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        to_byte = {c: b for b, c in bytes_to_unicode().items()}
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        special = set(tokenizer.all_special_tokens) | set(tokenizer.added_tokens_encoder)
        return [p if p in special or p is None else bytes(to_byte.get(c, 0x3F) for c in p).decode("utf-8", "replace")
                for p in pieces]
    return tokenizer.batch_decode([[i] for i in range(len(tokenizer))])


@dataclass
class LineStop:
    has_newline: torch.Tensor  # bool [V]
    has_text: torch.Tensor  # bool [V]: a non-blank character
    newline_after_text: torch.Tensor  # bool [V]: a newline after a non-blank character of this token

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, device: torch.device) -> "LineStop":
        texts = _token_texts(tokenizer)
        nl, text, after = [], [], []
        for s in texts:
            s = s or ""
            first_text = next((i for i, ch in enumerate(s) if not ch.isspace()), None)
            nl.append("\n" in s)
            text.append(first_text is not None)
            after.append(first_text is not None and "\n" in s[first_text:])
        as_tensor = lambda xs: torch.tensor(xs, dtype=torch.bool, device=device)  # noqa: E731
        return cls(as_tensor(nl), as_tensor(text), as_tensor(after))

    def step(self, tokens: torch.Tensor, seen_text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(stop after this token, seen_text after it) for tokens [B] appended to rows whose text so far
        has non-blank characters where seen_text [B] is True. Ids past the tables never stop a line."""
        ids = tokens.clamp(max=self.has_newline.numel() - 1)
        inside = tokens < self.has_newline.numel()
        stop = inside & ((seen_text & self.has_newline[ids]) | self.newline_after_text[ids])
        return stop, seen_text | (inside & self.has_text[ids])
