"""Single-line mode's per-token tables (engine/line_stop.py): a token that holds text and then a newline
ends the line by itself; a newline before any text does not end it, whichever token it comes in."""
from __future__ import annotations

import re

import torch

from fim_lsp.engine.line_stop import LineStop, _token_texts

CPU = torch.device("cpu")


class Vocabulary:
    """A hand-made vocabulary: the table builder reads each id's text through batch_decode, as it does
    for any tokenizer that is not byte-level BPE."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    def batch_decode(self, ids: list[list[int]]) -> list[str]:
        return [self.texts[i[0]] for i in ids]


TEXTS = ["x", "\n", "x\n", "  foo()\n  ", "\n  ", "\nfoo", " ", "\n\n", "):\n"]
ID = {t: i for i, t in enumerate(TEXTS)}


def run(rule: LineStop, texts: list[str], seen: bool = False) -> list[bool]:
    """Whether the line ends after each token, fed one at a time to one row."""
    flag = torch.tensor([seen])
    out = []
    for t in texts:
        stop, flag = rule.step(torch.tensor([ID[t]]), flag)
        out.append(bool(stop))
    return out


def test_a_token_with_text_then_a_newline_ends_the_line_by_itself():
    rule = LineStop.from_tokenizer(Vocabulary(TEXTS), CPU)
    for token in ("x\n", "  foo()\n  ", "):\n"):
        assert run(rule, [token]) == [True], token  # nothing typed before it on the line


def test_a_newline_before_any_text_does_not_end_the_line():
    rule = LineStop.from_tokenizer(Vocabulary(TEXTS), CPU)
    for token in ("\n", "\n  ", "\n\n", "\nfoo"):
        assert run(rule, [token]) == [False], token
    # the text that comes after such a newline starts the line; the next newline ends it
    assert run(rule, ["\n\n", " ", "\nfoo", "x", "\n"]) == [False, False, False, False, True]
    assert run(rule, ["\n  ", "x", "\n  "]) == [False, False, True]
    # once the row has text, a bare newline ends the line
    assert run(rule, ["\n"], seen=True) == [True]


def test_ids_past_the_tables_never_end_a_line():
    rule = LineStop.from_tokenizer(Vocabulary(TEXTS), CPU)
    stop, seen = rule.step(torch.tensor([len(TEXTS) + 5]), torch.tensor([True]))
    assert not bool(stop) and bool(seen)


def test_the_real_tokenizer_tables_follow_the_rule_for_every_token(shared_data):
    """Over Qwen's whole vocabulary (1977 of its tokens hold text then a newline), against the rule
    written as regular expressions."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(shared_data / "tokenizers" / "qwen2.5-coder"))
    rule = LineStop.from_tokenizer(tok, CPU)
    texts = [t or "" for t in _token_texts(tok)]
    after = [bool(re.search(r"\S[^\n]*\n", t)) for t in texts]
    assert sum(after) > 1000
    assert rule.newline_after_text.tolist() == after
    assert rule.has_newline.tolist() == ["\n" in t for t in texts]
    assert rule.has_text.tolist() == [bool(re.search(r"\S", t)) for t in texts]
    for text in (")\n", ":\n", "):\n", "()\n\n"):  # one token each in Qwen's vocabulary
        (tid,) = tok(text, add_special_tokens=False)["input_ids"]
        stop, _ = rule.step(torch.tensor([tid]), torch.tensor([False]))
        assert bool(stop), text
    for text in ("\n", "\n\n", " \n"):
        (tid,) = tok(text, add_special_tokens=False)["input_ids"]
        stop, seen = rule.step(torch.tensor([tid]), torch.tensor([False]))
        assert not bool(stop) and not bool(seen), text
