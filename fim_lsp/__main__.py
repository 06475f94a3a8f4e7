"""Entry point: `fim-lsp` / `python -m fim_lsp` start the language server on stdio;
`python -m fim_lsp complete ...` runs one completion."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["complete"]:
        from .cli import complete_main

        return complete_main(argv[1:])
    from .server.main import serve_main

    return serve_main(argv)


if __name__ == "__main__":
    sys.exit(main())
