"""Holes for the context benchmark, from a Python source tree nobody here wrote.

The ground truth comes from Python's own `ast` and `tokenize`, not from the tree-sitter index under
test: a hole is a use of a name (a NAME token, not text in a string or comment) that is defined
(a top-level function or class, or a method) in exactly one other file of the tree and not in the
hole's own file. The cursor sits where the name starts; the rest of that line is the middle."""
from __future__ import annotations

import ast
import io
import random
import tokenize
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Defined:
    path: Path
    line: int  # 0-based, the `def`/`class` line (after any decorators)
    header: str  # that line, stripped: what must be found in a prompt


@dataclass(frozen=True)
class Hole:
    path: Path
    line: int  # 0-based
    column: int  # where the name starts (a Python string index)
    name: str
    definition: Defined


def definitions(path: Path, text: str) -> list[tuple[str, Defined]]:
    lines = text.split("\n")
    found = []
    tree = ast.parse(text)
    for node in tree.body:
        members = [node] + (list(node.body) if isinstance(node, ast.ClassDef) else [])
        for item in members:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                line = item.lineno - 1
                found.append((item.name, Defined(path, line, lines[line].strip())))
    return found


def python_files(root: Path) -> dict[Path, str]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
            ast.parse(text)
        except (UnicodeDecodeError, SyntaxError, ValueError):
            continue
        out[path] = text
    return out


def sample_holes(files: dict[Path, str], count: int, seed: int) -> list[Hole]:
    """Up to `count` holes drawn at random (seeded), at most one per line."""
    defined: dict[str, list[Defined]] = {}
    own: dict[Path, set[str]] = {}
    for path, text in files.items():
        for name, d in definitions(path, text):
            defined.setdefault(name, []).append(d)
            own.setdefault(path, set()).add(name)
    candidates: list[Hole] = []
    for path, text in files.items():
        lines = text.split("\n")
        taken: set[int] = set()
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type != tokenize.NAME:
                continue
            (row, col), name = tok.start, tok.string
            line = row - 1
            where = defined.get(name, [])
            if line in taken or len(where) != 1 or where[0].path == path or name in own.get(path, ()):
                continue
            stripped = lines[line].lstrip()
            if stripped.startswith(("import ", "from ", "def ", "class ", "async def ", "@", "#")):
                continue
            taken.add(line)
            candidates.append(Hole(path, line, col, name, where[0]))
    rng = random.Random(seed)
    rng.shuffle(candidates)
    return candidates[:count]
