"""`fim-lsp` / `python -m fim_lsp`: the language server on stdio (or TCP for debugging)."""
from __future__ import annotations

import argparse
import sys

from ..engine.config import add_engine_args, config_from_args
from .settings import LOG_LEVELS, SERVER_ENGINE_DEFAULTS, ServerSettings, check_device


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fim-lsp", description="Fill-in-the-middle code completion language server. "
        "Editor settings (initializationOptions / didChangeConfiguration) override these options.")
    parser.add_argument("--stdio", action="store_true", help="talk LSP over stdin/stdout (the default)")
    parser.add_argument("--tcp", metavar="HOST:PORT", help="listen on a TCP socket instead, for debugging")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                        help="for the log file (see --log-file) and window/logMessage")
    parser.add_argument("--log-file", action="store_true", help="print the log file's path and exit")
    add_engine_args(parser)
    parser.set_defaults(**SERVER_ENGINE_DEFAULTS)
    return parser


def serve_main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_file:
        from .logs import log_file

        print(log_file())
        return 0
    try:
        config = config_from_args(args)
        check_device(config)
    except ValueError as err:
        parser.error(str(err))
    # Imported late: torch/transformers/pygls take a while and `--help` should not wait for them.
    from .handlers import register
    from .server import FimLanguageServer

    ls = FimLanguageServer(config, ServerSettings(log_level=args.log_level), log_level=args.log_level)
    register(ls)
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        if not port.isdigit():
            parser.error("--tcp wants HOST:PORT, e.g. 127.0.0.1:2087")
        ls.start_tcp(host or "127.0.0.1", int(port))
    else:
        ls.start_io()
    return ls.close()


if __name__ == "__main__":
    sys.exit(serve_main(sys.argv[1:]))
