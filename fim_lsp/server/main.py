"""`fim-lsp` / `python -m fim_lsp`: the language server on stdio (or TCP for debugging)."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from ..engine.config import add_engine_args, config_from_args
from .settings import LOG_LEVELS, SERVER_ENGINE_DEFAULTS, ServerSettings, check_device


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fim-lsp", description="Fill-in-the-middle code completion language server. "
        "Editor settings (initializationOptions / didChangeConfiguration) override these options.")
    parser.add_argument("--stdio", action="store_true", help="talk LSP over stdin/stdout (the default)")
    parser.add_argument("--tcp", metavar="HOST:PORT",
                        help="listen on a loopback TCP socket instead, for debugging; the client must send the "
                        "secret from --tcp-secret-file as initializationOptions.fimLspSecret (see README)")
    parser.add_argument("--tcp-secret-file", metavar="PATH", type=Path, default=None,
                        help="with --tcp: a file only you can read (mode 0600) holding the secret; created with "
                        "a random one when missing (default: tcp-secret in the user state dir)")
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
    tcp: tuple[str, int, Path] | None = None
    if args.tcp:
        from .tcp import default_secret_file, is_loopback, read_secret

        host, _, port = args.tcp.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        if not port.isdigit() or int(port) > 65535:
            parser.error("--tcp wants HOST:PORT, e.g. 127.0.0.1:2087")
        secret_file = args.tcp_secret_file or default_secret_file()
        if not is_loopback(host):
            parser.error(f"--tcp binds loopback addresses only (127.0.0.1, ::1, localhost), not {host!r}: "
                         "anyone who can reach the port could read your files through the server")
        try:
            read_secret(secret_file)  # refuse a bad file before loading anything
        except ValueError as err:
            parser.error(str(err))
        tcp = (host, int(port), secret_file)
    # Imported late: torch/transformers/pygls take a while and `--help` should not wait for them.
    from .handlers import register
    from .server import FimLanguageServer

    ls = FimLanguageServer(config, ServerSettings(log_level=args.log_level), log_level=args.log_level)
    register(ls)
    if tcp is not None:
        from .tcp import serve_tcp

        received = serve_tcp(ls.protocol, *tcp)
    else:
        from .transport import serve_stdio

        received = serve_stdio(ls.protocol)
    if received is None:
        return ls.close()
    ls.exit_code = 128 + received
    code = ls.close()
    # Interpreter teardown puts the default signal handlers back: a second Ctrl-C during it would kill
    # the process by SIGINT instead of exiting 130. After a signal nothing is left to tear down.
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(serve_main(sys.argv[1:]))
