"""Editor-like contexts cut from HumanEval-Infilling prompts at a chosen token length.

A HumanEval problem is ~150-300 tokens, shorter than the contexts worth measuring, so the problems are
laid end to end as one Python file (as an editor buffer holds many functions). The hole sits where a
problem's missing line was; the prefix is the text before it and the suffix the text after, cut to
`prefix_share` and `1 - prefix_share` of the context budget on token boundaries."""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fim_lsp.engine.loading import encode

BENCHMARK_FILE = "human-eval-infilling/HumanEval-SingleLineInfilling.jsonl.gz"


@dataclass
class Context:
    task_id: str
    prefix: str
    suffix: str
    middle: str  # the reference line (HumanEval's canonical solution line, its newline included)
    target_tokens: int  # what was asked for
    prefix_tokens: int  # what the cut produced, counted with the autoregressive tokenizer
    suffix_tokens: int

    @property
    def tokens(self) -> int:
        return self.prefix_tokens + self.suffix_tokens


def read_problems(data_dir: Path) -> list[dict[str, Any]]:
    path = Path(data_dir) / BENCHMARK_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass --data-dir pointing at a folder laid out like "
                                f"shared/data (human-eval-infilling/*.jsonl.gz)")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    # One hole per problem: the single-line file has one row per line of each solution
    # ("SingleLineInfilling/HumanEval/0/L3"); keep each problem's first, so that samples spread over
    # different functions rather than over the lines of one.
    seen: set[str] = set()
    out = []
    for row in rows:
        problem = row["task_id"].rsplit("/L", 1)[0]
        if problem not in seen:
            seen.add(problem)
            out.append(row)
    return out


def _full(row: dict[str, Any]) -> str:
    return row["prompt"] + row["canonical_solution"] + row["suffix"]


def make_contexts(problems: list[dict[str, Any]], tokenizer: Any, context_tokens: int, samples: int,
                  prefix_share: float = 0.75) -> list[Context]:
    """`samples` contexts of about `context_tokens` tokens, hole at problem i's missing line."""
    if not problems:
        raise ValueError("no HumanEval problems to build contexts from")
    out = []
    n = len(problems)
    for i in range(samples):
        row = problems[i % n]
        want_pre = max(1, round(context_tokens * prefix_share))
        want_suf = max(0, context_tokens - want_pre)
        # Earlier problems before the hole, later ones after it, wrapping round, until each side is
        # long enough to cut (each problem is at least a few dozen tokens, so n rounds always suffice).
        before, after = row["prompt"], row["suffix"]
        j = 1
        while len(encode(tokenizer, before)) < want_pre and j < n:
            before = _full(problems[(i - j) % n]) + "\n\n" + before
            j += 1
        j = 1
        while len(encode(tokenizer, after)) < want_suf and j < n:
            after = after + "\n\n" + _full(problems[(i + j) % n])
            j += 1
        pre_ids, suf_ids = encode(tokenizer, before), encode(tokenizer, after)
        prefix = tokenizer.decode(pre_ids[-want_pre:])
        suffix = tokenizer.decode(suf_ids[:want_suf]) if want_suf else ""
        # Re-encoding a cut can merge or split a token at the cut: record the count actually sent.
        out.append(Context(task_id=row["task_id"], prefix=prefix, suffix=suffix, middle=row["canonical_solution"],
                           target_tokens=context_tokens,
                           prefix_tokens=len(encode(tokenizer, prefix)),
                           suffix_tokens=len(encode(tokenizer, suffix))))
    return out
