"""The definitions in one file's text: tree-sitter for Python, JavaScript, TypeScript and Java, a
line-pattern fallback for other languages.

Only declarations a caller can use from elsewhere are taken: top-level functions, classes and
variables, and the members of classes (methods, fields); nothing inside a function body."""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Callable

MAX_DEFINITION_LINES = 16  # a definition's text is its first lines: the signature, the docstring, the start
# Variables and fields: a name that also has a function, class or type definition means that one.
WEAK_KINDS = frozenset({"assignment", "public_field_definition", "field_definition", "property_signature"})


@dataclass(frozen=True)
class Definition:
    name: str
    kind: str  # the syntax node's type, or "pattern" for the fallback
    start_line: int  # 0-based, decorators and annotations included
    end_line: int  # exclusive, of the whole definition
    text: str  # its first MAX_DEFINITION_LINES lines at most


@dataclass(frozen=True)
class Grammar:
    language: Callable[[], Any]  # the wheel's language() capsule
    definitions: frozenset[str]  # node types recorded by their `name` field
    descend: frozenset[str]  # node types whose children are searched for more


def _python() -> Any:
    import tree_sitter_python

    return tree_sitter_python.language()


def _javascript() -> Any:
    import tree_sitter_javascript

    return tree_sitter_javascript.language()


def _typescript() -> Any:
    import tree_sitter_typescript

    return tree_sitter_typescript.language_typescript()


def _tsx() -> Any:
    import tree_sitter_typescript

    return tree_sitter_typescript.language_tsx()


def _java() -> Any:
    import tree_sitter_java

    return tree_sitter_java.language()


_JS_DEFS = frozenset({"function_declaration", "generator_function_declaration", "class_declaration",
                      "abstract_class_declaration", "method_definition", "interface_declaration",
                      "type_alias_declaration", "enum_declaration", "variable_declarator",
                      "public_field_definition", "field_definition", "function_signature", "method_signature",
                      "abstract_method_signature", "property_signature"})
_JS_DESCEND = frozenset({"program", "export_statement", "class_declaration", "abstract_class_declaration",
                         "class_body", "lexical_declaration", "variable_declaration", "ambient_declaration",
                         "interface_declaration", "interface_body", "object_type"})
GRAMMARS = {
    "python": Grammar(_python, frozenset({"function_definition", "class_definition", "assignment"}),
                      frozenset({"module", "decorated_definition", "class_definition", "block", "if_statement",
                                 "else_clause", "elif_clause", "try_statement", "except_clause", "finally_clause",
                                 "expression_statement"})),
    "javascript": Grammar(_javascript, _JS_DEFS, _JS_DESCEND),
    "typescript": Grammar(_typescript, _JS_DEFS, _JS_DESCEND),
    "tsx": Grammar(_tsx, _JS_DEFS, _JS_DESCEND),
    "java": Grammar(_java, frozenset({"class_declaration", "interface_declaration", "enum_declaration",
                                      "record_declaration", "annotation_type_declaration", "method_declaration",
                                      "variable_declarator"}),
                    frozenset({"program", "class_declaration", "interface_declaration", "enum_declaration",
                               "record_declaration", "class_body", "interface_body", "enum_body",
                               "enum_body_declarations", "field_declaration", "constant_declaration"})),
}
EXTENSIONS = {".py": "python", ".pyi": "python", ".js": "javascript", ".jsx": "javascript",
              ".mjs": "javascript", ".cjs": "javascript", ".ts": "typescript", ".mts": "typescript",
              ".cts": "typescript", ".tsx": "tsx", ".java": "java"}
# Languages without a grammar here, read with FALLBACK's patterns.
FALLBACK_EXTENSIONS = frozenset({
    ".go", ".rs", ".rb", ".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".cs", ".kt", ".kts", ".swift",
    ".scala", ".php", ".lua", ".sh", ".bash", ".zsh", ".pl", ".pm", ".r", ".jl", ".ex", ".exs", ".erl",
    ".hs", ".ml", ".mli", ".dart", ".zig", ".nim", ".v", ".sql", ".proto", ".groovy", ".clj", ".fs", ".vue",
    ".svelte", ".elm", ".m", ".mm", ".tf", ".gd",
})
_MODIFIERS = (r"(?:(?:export|default|public|private|protected|internal|static|async|abstract|final|sealed|open|"
              r"data|inline|virtual|override|unsafe|extern|local|pub(?:\([^)]*\))?|const(?=\s+fn))\s+)*")
FALLBACK = re.compile(
    r"^(?P<indent>[ \t]*)" + _MODIFIERS
    + r"(?:def|defp|fn|func|function|class|struct|enum|trait|interface|type|module|sub|object|protocol|"
      r"union|macro|impl|record|message|service|procedure|proc)\s+"
    + r"(?:\([^)]*\)\s*)?"  # Go's method receiver
    + r"(?P<name>[A-Za-z_][A-Za-z0-9_]*[!?]?)")
_ENDERS = ("}", "end", ")", "]")

_parsers = threading.local()  # a tree-sitter Parser is not shared between threads


def language_of(path: PurePath | str) -> str | None:
    """"python", "javascript", ... for a file with a grammar, "text" for the fallback, None otherwise."""
    suffix = PurePath(path).suffix.lower()
    if suffix in EXTENSIONS:
        return EXTENSIONS[suffix]
    return "text" if suffix in FALLBACK_EXTENSIONS else None


def _parser(language: str) -> Any:
    cache = getattr(_parsers, "by_language", None)
    if cache is None:
        cache = _parsers.by_language = {}
    if language not in cache:
        from tree_sitter import Language, Parser

        cache[language] = Parser(Language(GRAMMARS[language].language()))
    return cache[language]


def find_definitions(path: PurePath | str, text: str) -> list[Definition]:
    """The definitions of a file, in the file's order; [] for a language neither read nor guessed."""
    language = language_of(path)
    if language is None:
        return []
    lines = text.split("\n")
    if language == "text":
        return _fallback(lines)
    return _tree(language, text.encode("utf-8", "surrogatepass"), lines)


def _snippet(lines: list[str], start: int, end: int) -> str:
    return "\n".join(lines[start:min(end, start + MAX_DEFINITION_LINES)])


def _tree(language: str, source: bytes, lines: list[str]) -> list[Definition]:
    grammar = GRAMMARS[language]
    found: list[Definition] = []
    stack = [_parser(language).parse(source).root_node]
    while stack:
        node = stack.pop()
        if node.type in grammar.definitions:
            definition = _definition(node, lines)
            if definition is not None:
                found.append(definition)
        if node.type in grammar.descend:
            stack.extend(reversed(node.named_children))
    found.sort(key=lambda d: d.start_line)
    return found


def _definition(node: Any, lines: list[str]) -> Definition | None:
    name = node.child_by_field_name("name") if node.type != "assignment" else node.child_by_field_name("left")
    if name is None or name.type not in ("identifier", "type_identifier", "property_identifier"):
        return None  # destructuring, subscripts, computed names
    outer = node
    # the statement the definition is part of: its decorators, `export`, `const`, Java's field type
    while outer.parent is not None and outer.parent.type in (
            "decorated_definition", "export_statement", "lexical_declaration", "variable_declaration",
            "expression_statement", "field_declaration", "constant_declaration"):
        outer = outer.parent
    start, end = outer.start_point[0], outer.end_point[0] + 1
    return Definition(name.text.decode("utf-8", "replace"), node.type, start, end, _snippet(lines, start, end))


def _fallback(lines: list[str]) -> list[Definition]:
    """Definitions by pattern: the line that starts one, down to the next line indented no deeper
    (a closing `}` or `end` at the definition's own depth included)."""
    found: list[Definition] = []
    for i, line in enumerate(lines):
        match = FALLBACK.match(line)
        if match is None:
            continue
        depth = len(match["indent"].expandtabs(4))
        end = i + 1
        while end < len(lines):
            nxt = lines[end]
            stripped = nxt.lstrip()
            if stripped and len(nxt[: len(nxt) - len(stripped)].expandtabs(4)) <= depth:
                end += 1 if stripped.startswith(_ENDERS) else 0
                break
            end += 1
        while end > i + 1 and not lines[end - 1].strip():
            end -= 1  # blank lines before the next definition, or at the end of the file
        found.append(Definition(match["name"], "pattern", i, end, _snippet(lines, i, end)))
    return found
