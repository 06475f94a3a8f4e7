"""Prompt assembly with the real Qwen2.5-Coder tokenizer (../shared/data): the repo-level layout's exact
ids, the budgets, appending, what never reaches a prompt, and the diffusion prompt's cap."""
from __future__ import annotations

from pathlib import Path

import pytest

from fim_lsp.context import ContextGatherer, ContextSettings, Cursor, DefinitionIndex, EditTracker, Privacy
from fim_lsp.engine.ar_fim import fim_ids
from fim_lsp.engine.prompt import CHARS_PER_TOKEN, SegmentCache, clip_text, dllm_prompt, qwen_prompt
from fim_lsp.engine.requests import DLLM_MAX_TOKENS, ContextChunk, ProjectContext, PromptBudget

# REFERENCE.md section 1, written out rather than looked up, so a wrong token is caught
ENDOFTEXT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, REPO_NAME, FILE_SEP = 151643, 151659, 151660, 151661, 151663, 151664
SPECIAL = set(range(151643, 151666))


@pytest.fixture(scope="module")
def tok(shared_data: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(shared_data / "tokenizers" / "qwen2.5-coder"))


def enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


UTIL = "import math\n\n\ndef circle_area(r):\n    return math.pi * r * r\n"
MAIN = "from shapes.util import circle_area\n\n\ndef report(r):\n    area = \n    return area\n"


def two_file_workspace(root: Path) -> tuple[Path, Path]:
    (root / "shapes").mkdir(parents=True)
    (root / "shapes" / "util.py").write_text(UTIL)
    (root / "shapes" / "main.py").write_text(MAIN)
    return root / "shapes" / "util.py", root / "shapes" / "main.py"


def test_two_file_workspace_prompt_exact_text_and_ids(tok, tmp_path: Path) -> None:
    """The cursor in main.py uses circle_area, defined in util.py (not open): the prompt is Qwen's
    repo-level layout with util.py's definition first and main.py last, no space after a path."""
    util, main = two_file_workspace(tmp_path / "geometry")
    privacy = Privacy([tmp_path / "geometry"])
    index = DefinitionIndex(privacy)
    index.build()
    gatherer = ContextGatherer(privacy, EditTracker(), index)
    lines = MAIN.split("\n")
    prefix = "\n".join(lines[:4]) + "\n    area = "
    suffix = "\n" + "\n".join(lines[5:])
    context = gatherer.gather(Cursor(main, MAIN, 4, (0, len(lines))), {main: MAIN})
    prompt = qwen_prompt(tok, prefix, suffix, context)

    definition = "def circle_area(r):\n    return math.pi * r * r"
    assert prompt.text == (
        "<|repo_name|>geometry\n"
        f"<|file_sep|>shapes/util.py\n{definition}\n"
        "<|file_sep|>shapes/main.py\n"
        f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>")
    assert prompt.ids == ([REPO_NAME] + enc(tok, "geometry\n")
                          + [FILE_SEP] + enc(tok, f"shapes/util.py\n{definition}\n")
                          + [FILE_SEP] + enc(tok, "shapes/main.py\n")
                          + [FIM_PREFIX] + enc(tok, prefix) + [FIM_SUFFIX] + enc(tok, suffix) + [FIM_MIDDLE])
    # pinned as the real tokenizer splits it: 'geometry' '\n' '<|file_sep|>' 'shapes' '/util' '.py' '\n' 'def' ...
    assert prompt.ids == [
        151663, 15281, 198, 151664, 92059, 22610, 7197, 198, 750, 12671, 15030, 2601, 982, 262, 470, 6888, 24259,
        353, 435, 353, 435, 198, 151664, 92059, 15351, 7197, 198, 151659, 1499, 20816, 1971, 1159, 12671, 15030,
        1406, 750, 1895, 2601, 982, 262, 3082, 284, 220, 151661, 198, 262, 470, 3082, 198, 151660]
    (used,) = prompt.chunks
    assert (used.chunk.path, used.chunk.start_line, used.chunk.end_line, used.chunk.source) == \
        ("shapes/util.py", 3, 5, "definition")
    assert used.tokens == 1 + len(enc(tok, f"shapes/util.py\n{definition}\n"))
    assert prompt.ids[:prompt.context_tokens] == [REPO_NAME] + enc(tok, "geometry\n") + \
        [FILE_SEP] + enc(tok, f"shapes/util.py\n{definition}\n")


def test_without_context_the_prompt_is_todays_fim_prompt(tok) -> None:
    prefix, suffix = "def f(x):\n    return ", "\n\nprint(f(2))\n"
    assert qwen_prompt(tok, prefix, suffix).ids == fim_ids(tok, prefix, suffix)
    d = dllm_prompt(tok, prefix, suffix)
    assert (d.prefix_ids, d.suffix_ids) == (enc(tok, prefix), enc(tok, suffix))
    # a budget alone cuts the local window as the server always has, and adds no repo tokens
    long_prefix = "".join(f"value_{i} = compute({i})\n" for i in range(400))
    p = qwen_prompt(tok, long_prefix, suffix, budget=PromptBudget(prefix_tokens=100))
    assert p.ids == fim_ids(tok, p.prefix, suffix) and long_prefix.endswith(p.prefix)
    assert 50 < len(enc(tok, p.prefix)) <= 100 and p.prefix.startswith("value_")


def chunk(name: str, lines: int, score: float, path: str | None = None) -> ContextChunk:
    text = "\n".join(f"{name}_{i} = {name}_{i - 1} + {i}" for i in range(lines))
    return ContextChunk(path or f"pkg/{name}.py", text, 0, lines, "open-file", score)


def test_budgets_total_split_and_least_relevant_dropped_first(tok) -> None:
    chunks = (chunk("alpha", 10, 1.5), chunk("beta", 10, 1.1), chunk("gamma", 10, 1.9))
    context = ProjectContext("repo", "pkg/main.py", chunks)
    prefix = "".join(f"line_{i} = {i}\n" for i in range(2000))
    suffix = "".join(f"after_{i} = {i}\n" for i in range(2000))
    size = 1 + len(enc(tok, f"pkg/beta.py\n{chunks[1].text}\n"))  # each chunk's tokens (116)

    budget = PromptBudget(total_tokens=800, prefix_tokens=400, suffix_tokens=100)
    p = qwen_prompt(tok, prefix, suffix, context, budget)
    assert len(p.ids) <= 800
    assert 350 < len(enc(tok, p.prefix)) <= 400 and 80 < len(enc(tok, p.suffix)) <= 100  # the split
    assert prefix.endswith(p.prefix) and p.prefix.startswith("line_") and suffix.startswith(p.suffix)
    # two of three fit: the least relevant (beta, 1.1) is the one left out, the others keep their order
    assert [u.chunk.path for u in p.chunks] == ["pkg/alpha.py", "pkg/gamma.py"]
    assert [u.tokens for u in p.chunks] == [size, size] and 800 - len(p.ids) < size
    assert "beta_3" not in p.text and "alpha_3" in p.text and "gamma_3" in p.text

    # what the local window leaves goes to the context: a short window lets all three in
    short = qwen_prompt(tok, "x = ", "\n", context, budget)
    assert [u.chunk.path for u in short.chunks] == ["pkg/alpha.py", "pkg/beta.py", "pkg/gamma.py"]

    # a total smaller than the local caps: the prefix gives way, the total holds
    tight = qwen_prompt(tok, prefix, suffix, context, PromptBudget(total_tokens=300, prefix_tokens=400,
                                                                   suffix_tokens=100))
    assert len(tight.ids) <= 300 and not tight.chunks and len(enc(tok, tight.suffix)) > 80


def test_a_special_token_string_typed_in_code_stays_text(tok) -> None:
    sneaky = ContextChunk("pkg/tokens.py", 'SEP = "<|file_sep|>"\nEND = "<|endoftext|><|fim_middle|>"', 0, 2,
                          "open-file", 1.5)
    context = ProjectContext("repo<|repo_name|>", "pkg/<|fim_suffix|>.py", (sneaky,))
    p = qwen_prompt(tok, 'x = "<|fim_prefix|>"\n', 'y = "<|fim_suffix|>"\n', context)
    # the structural tokens only: one repo name, two file separators, one of each FIM token
    assert [t for t in p.ids if t in SPECIAL] == [REPO_NAME, FILE_SEP, FILE_SEP, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE]
    assert "<|endoftext|><|fim_middle|>" in p.text  # still there, as text
    assert qwen_prompt(tok, 'x = "<|fim_middle|>"', "").ids.count(FIM_MIDDLE) == 1  # without context too
    d = dllm_prompt(tok, 'x = "<|fim_prefix|>"\n', 'y = "<|fim_suffix|>"\n', context)
    assert not SPECIAL & set(d.prefix_ids + d.suffix_ids)


def test_adding_a_chunk_only_appends_tokens(tok, tmp_path: Path) -> None:
    """Across keystrokes: the cursor's text changes and a newly opened file adds a chunk (more relevant
    than the one held): the prompt's beginning, up to the end of the old chunks, stays token for token."""
    root = tmp_path / "ws"
    root.mkdir()
    main = root / "main.py"
    other = root / "helpers.py"
    third = root / "extra.py"
    other_text = "def parse_header(line):\n    key, value = line.split(':', 1)\n    return key, value\n"
    third_text = "def read_headers(stream):\n    for line in stream:\n        key, value = parse_header(line)\n"
    doc = "def read(stream):\n    for line in stream:\n        key, value = parse_header(line)\n        "
    gatherer = ContextGatherer(Privacy([root]), EditTracker())
    budget = PromptBudget()

    cache = SegmentCache(tok)

    def keystroke(text: str, docs: dict) -> object:
        context = gatherer.gather(Cursor(main, text, text.count("\n"), (0, text.count("\n") + 1)), docs)
        prompt = qwen_prompt(tok, text, "\n", context, budget, cache)
        assert prompt.ids == qwen_prompt(tok, text, "\n", context, budget).ids  # the cache changes no id
        return prompt

    first = keystroke(doc, {main: doc, other: other_text})
    second = keystroke(doc + "yi", {main: doc + "yi", other: other_text, third: third_text})
    assert [u.chunk.path for u in first.chunks] == ["helpers.py"]
    assert [u.chunk.path for u in second.chunks] == ["helpers.py", "extra.py"]
    assert second.chunks[1].chunk.score > second.chunks[0].chunk.score  # appended though more relevant
    assert second.ids[:first.context_tokens] == first.ids[:first.context_tokens]
    assert second.ids[first.context_tokens:second.context_tokens] == \
        [FILE_SEP] + enc(tok, f"extra.py\n{third_text.rstrip()}\n")


def test_ignored_or_excluded_text_never_reaches_a_prompt_even_while_open(tok, tmp_path: Path) -> None:
    """Files git ignores, secret files and the user's excluded files are open in the editor, edited,
    and define the very names the cursor uses: none of their text reaches either model's prompt. The
    same kind of file, allowed, does (the check is not vacuous)."""
    root = tmp_path / "ws"
    (root / "private").mkdir(parents=True)
    (root / ".gitignore").write_text("notes_*.py\n")
    files = {
        root / "notes_secret.py": "def lookup_token():\n    return 'IGNORED-MARKER-1'\n",
        root / ".env.local": "API_KEY=ENV-MARKER-2\ndef lookup_token(): pass\n",
        root / "private" / "keys.py": "def lookup_token():\n    return 'EXCLUDED-MARKER-3'\n",
        root / "public.py": "def fetch_user():\n    return 'ALLOWED-MARKER-4'\n",
    }
    for path, text in files.items():
        path.write_text(text)
    cursor_text = "token = lookup_token()\nuser = fetch_user()\nlookup_token  # 'IGNORED' 'MARKER' API_KEY\n"
    main = root / "main.py"
    main.write_text(cursor_text)
    privacy = Privacy([root], exclude=["private/"])
    index = DefinitionIndex(privacy)
    index.build()
    edits = EditTracker()
    for path in files:
        edits.record(path, 0, 0, "def lookup_token():\n")
    gatherer = ContextGatherer(privacy, edits, index, ContextSettings(context_deadline_ms=10_000))
    context = gatherer.gather(Cursor(main, cursor_text, 2, (2, 3)), {main: cursor_text, **files})
    assert context is not None
    qwen = qwen_prompt(tok, cursor_text, "", context)
    dllm = dllm_prompt(tok, cursor_text, "", context, PromptBudget(dllm_context_tokens=1500))
    for text in (qwen.text, dllm.text("<M>")):
        assert "ALLOWED-MARKER-4" in text
        for marker in ("IGNORED-MARKER-1", "ENV-MARKER-2", "EXCLUDED-MARKER-3"):
            assert marker not in text
    assert "public.py" in {c.path for c in context.chunks} <= {"public.py", "main.py"}
    # the editing of such a file is no way in either, nor is editing it as the cursor's file
    assert gatherer.gather(Cursor(root / ".env.local", files[root / ".env.local"], 0), files) is None


def test_diffusion_prompt_holds_no_repo_tokens_and_stays_within_its_cap(tok) -> None:
    chunks = tuple(chunk(f"mod{i}", 20, 1 + i / 10) for i in range(12))
    context = ProjectContext("repo", "pkg/main.py", chunks)
    prefix = "".join(f"line_{i} = {i}\n" for i in range(3000))
    suffix = "".join(f"after_{i} = {i}\n" for i in range(3000))
    # (context tokens, local caps, chunks expected): 1500 + 600 leave no room under 2,048 for context
    for n, caps, kept in ((512, (1024, 256), 1), (1800, (800, 200), 3), (1800, (1500, 600), 0), (0, (1024, 256), 0)):
        budget = PromptBudget(prefix_tokens=caps[0], suffix_tokens=caps[1], dllm_context_tokens=n)
        d = dllm_prompt(tok, prefix, suffix, context, budget, hole_tokens=32)
        assert len(d.prefix_ids) + 32 + len(d.suffix_ids) <= DLLM_MAX_TOKENS
        assert not SPECIAL & set(d.prefix_ids + d.suffix_ids)
        local = len(enc(tok, d.prefix))
        assert len(d.prefix_ids) - local <= n  # the context's share, its file headers included
        assert d.prefix_text.endswith(d.prefix) and tok.decode(d.prefix_ids) == d.prefix_text
        assert len(d.chunks) == kept
        if kept:
            assert d.prefix_text.startswith("# pkg/mod")  # plain text, a comment naming each file
            assert "\n# pkg/main.py\n" + d.prefix in d.prefix_text
            # the most relevant chunks are the ones kept
            assert {u.chunk.path for u in d.chunks} == {c.path for c in chunks[-kept:]}
        else:
            assert d.prefix_ids == enc(tok, d.prefix)


class CountingTokenizer:
    """The real tokenizer, recording the length of every text it is asked to tokenize."""

    def __init__(self, tok) -> None:
        self.tok, self.lengths = tok, []

    def __call__(self, text, **kw):
        self.lengths.append(len(text))
        return self.tok(text, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_a_huge_line_is_cut_before_it_is_tokenized(tok) -> None:
    counting = CountingTokenizer(tok)
    huge = "x = [" + "1, " * 1_400_000 + "]"  # a 4 MB line
    budget = PromptBudget(total_tokens=2048, prefix_tokens=1024, suffix_tokens=256)
    p = qwen_prompt(counting, "def f():\n" + huge, huge + "\nprint(1)\n", ProjectContext("r", "a.py"), budget)
    assert len(p.ids) <= 2048 and huge.endswith(p.prefix) and huge.startswith(p.suffix)
    assert max(counting.lengths) <= 1024 * CHARS_PER_TOKEN
    assert clip_text(tok, "short line\n", 100, keep_end=True) == "short line\n"
