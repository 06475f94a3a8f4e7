"""CrossCodeEval's metrics: exact match and edit similarity of one completion, after the benchmark's
own post-processing of the generated code.

Written from amazon-science/cceval `scripts/eval_metric.py` (`process_examples`, `compute_metric_stmt`)
and `scripts/eval_utils.py` (`postprocess_code_lines`, `get_python_one_statement`,
`get_bracket_lang_statement`, `remove_comments`, `cal_edit_sim`), commit 25f9cab; no code copied. Its
generation scripts never stop at a newline (50 new tokens): the statement cut below is what makes a
line-completion prediction one statement."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from rapidfuzz import fuzz

# The folder names of the published data; the statement cut is defined for these four only.
CCEVAL_LANGUAGES = ("python", "java", "typescript", "csharp")
BRACKET_LANGUAGES = ("java", "typescript", "csharp")
_COMMENTS = (re.compile(r"#.*"), re.compile(r"//.*"))


@dataclass(frozen=True)
class CcevalScore:
    em: bool
    es: int  # 0-100, as fuzz.ratio returns it
    compared: str  # the prediction after the cut and the comment removal: what was compared


@lru_cache(maxsize=1)
def _python() -> Any:
    import tree_sitter
    import tree_sitter_python
    return tree_sitter.Language(tree_sitter_python.language())


def _no_error_node(code: str) -> bool:
    """True when tree-sitter's parse of `code` holds no ERROR node. Like cceval's `is_parse_valid`,
    a MISSING node (a token the parser inserted) is not an error; `has_error` covers both, so only the
    subtrees that have one are walked."""
    import tree_sitter
    stack = [tree_sitter.Parser(_python()).parse(code.encode("utf-8")).root_node]  # a parser per call: threads
    while stack:
        node = stack.pop()
        if node.type == "ERROR":
            return False
        stack.extend(c for c in node.children if c.has_error)
    return True


def python_statement(prompt: str, completion: str) -> str:
    """The completion up to the end of its first statement: the shortest head, ending just before a
    newline, that the prompt plus it parses without an error, right-stripped; the whole completion when
    there is none. (cceval tries every head and only then looks at the next character; checking the
    newline first gives the same head with fewer parses. A head ending at the completion's last
    character is never taken: cceval's look at the next character raises there and it keeps the whole.)"""
    for i in range(len(completion) - 1):
        if completion[i + 1] == "\n" and _no_error_node(prompt + completion[:i + 1]):
            return completion[:i + 1].rstrip()
    return completion


def bracket_statement(completion: str) -> str:
    """Java, TypeScript, C#: the completion up to and including its first `;`, `{` or `}`. When that
    character is the very first one, cceval keeps the whole completion (its `if end_idx` is false for
    index 0); kept as it is, so the figures compare."""
    for i, ch in enumerate(completion):
        if ch in ";{}":
            return completion[:i + 1] if i else completion
    return completion


def remove_comments(code: str) -> str:
    """cceval strips `#...` and `//...` to the end of the line in every language, from the prediction
    and from the ground truth alike (also inside strings: kept so, to compare with its figures)."""
    for pattern in _COMMENTS:
        code = pattern.sub("", code)
    return code


def exact_match(prediction: str, target: str) -> bool:
    """The non-blank lines, each stripped, are the same."""
    def lines(text: str) -> list[str]:
        return [line.strip() for line in text.split("\n") if line.strip()]
    return lines(prediction) == lines(target)


def edit_similarity(prediction: str, target: str) -> int:
    """fuzzywuzzy's `fuzz.ratio` of the stripped texts, as cceval's `cal_edit_sim` calls it: the Indel
    similarity in percent, rounded to an integer. fuzzywuzzy is now thefuzz, whose `ratio` is exactly
    `int(round(rapidfuzz.fuzz.ratio(a, b)))`; the old fuzzywuzzy gives the same with python-Levenshtein
    and can differ by a point without it (it falls back to difflib's matcher)."""
    return int(round(fuzz.ratio(prediction.strip(), target.strip())))


def cut_statement(prompt: str, completion: str, language: str) -> str:
    if language == "python":
        return python_statement(prompt, completion)
    if language in BRACKET_LANGUAGES:
        return bracket_statement(completion)
    raise ValueError(f"CrossCodeEval language {language!r}: one of {', '.join(CCEVAL_LANGUAGES)}")


def score(prompt: str, completion: str, groundtruth: str, language: str) -> CcevalScore:
    """EM and ES of one completion of the row whose `prompt` and `groundtruth` are given."""
    prediction = remove_comments(cut_statement(prompt, completion, language))
    target = remove_comments(groundtruth)
    return CcevalScore(exact_match(prediction, target), edit_similarity(prediction, target), prediction)
