"""The server package's imports run one way, server -> service -> engine: no module imports one that
imports it back (counting imports inside functions and under TYPE_CHECKING), and the engine never
imports the server."""
from __future__ import annotations

import ast
import graphlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fim_lsp"


def imports(path: Path) -> set[str]:
    """The fim_lsp modules `path` imports, as dotted names relative to fim_lsp ("server.service")."""
    here = path.relative_to(PACKAGE).with_suffix("").parts[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - node.level + 1]
            if node.module:
                out.add(".".join([*base, node.module]))
            else:
                out.update(".".join([*base, alias.name]) for alias in node.names)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            out.update(n.removeprefix("fim_lsp.") for n in names if n and n.startswith("fim_lsp."))
    return out


def graph() -> dict[str, set[str]]:
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts): imports(p) for p in PACKAGE.rglob("*.py")}


def test_server_modules_import_in_one_direction() -> None:
    deps = {name: {d for d in targets if d.startswith("server")}
            for name, targets in graph().items() if name.startswith("server")}
    graphlib.TopologicalSorter(deps).prepare()  # raises CycleError on a circle
    assert not deps["server.service"] & {"server.server", "server.handlers", "server.loader"}
    assert not deps["server.loader"] & {"server.server", "server.handlers", "server.service"}
    assert "server.main" not in deps["server.settings"]


def test_the_engine_never_imports_the_server() -> None:
    for name, targets in graph().items():
        if name.startswith("engine"):
            assert not [t for t in targets if t.startswith("server")], name
