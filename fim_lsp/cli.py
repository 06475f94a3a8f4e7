"""`python -m fim_lsp complete`: one completion from the command line, the contract scripts rely on."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .engine.config import add_engine_args, config_from_args
from .engine.ensemble import Engine, OutOfMemory
from .engine.loading import ModelLoadError
from .engine.results import Completion


def split_at(text: str, line: int, col: int) -> tuple[str, str]:
    """Prefix and suffix around a 0-based (line, column in characters) cursor."""
    lines = text.splitlines(keepends=True) or [""]
    if not 0 <= line < len(lines) + 1:
        raise ValueError(f"line {line} is past the end of the file ({len(lines)} lines)")
    offset = sum(len(l) for l in lines[:line])
    body = lines[line].rstrip("\r\n") if line < len(lines) else ""
    if not 0 <= col <= len(body):
        raise ValueError(f"column {col} is past the end of line {line} ({len(body)} characters)")
    return text[: offset + col], text[offset + col:]


def render(c: Completion) -> str:
    out = [f"winner: {c.winner.model if c.winner else '-'}", "completion:", c.text, "", "candidates:"]
    for cand in c.candidates:
        hole = f" L={cand.hole_length}" if cand.hole_length else ""
        out.append(f"  {cand.model}{hole}: ppl={cand.perplexity:.3f} tokens={cand.tokens} "
                   f"passes={cand.forward_passes} {cand.seconds:.2f}s  {cand.text!r}")
    out.append("timings: " + ", ".join(f"{k}={v:.3f}s" for k, v in c.timings.items()))
    return "\n".join(out)


def complete_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m fim_lsp complete",
                                     description="Fill the middle between a prefix and a suffix.")
    src = parser.add_argument_group("input (either prefix/suffix files, or a file and a 0-based cursor)")
    src.add_argument("--prefix-file", type=Path)
    src.add_argument("--suffix-file", type=Path)
    src.add_argument("--file", type=Path)
    src.add_argument("--line", type=int)
    src.add_argument("--col", type=int)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--single-line", action="store_true",
                        help="the server's mid-line mode: Qwen stops at the first newline after text, "
                             "the diffusion model tries --dllm-lengths-single-line")
    add_engine_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="fim-lsp: %(message)s")
    try:
        if args.file is not None:
            if args.line is None or args.col is None:
                parser.error("--file needs --line and --col")
            prefix, suffix = split_at(args.file.read_text(encoding="utf-8"), args.line, args.col)
        elif args.prefix_file is not None:
            prefix = args.prefix_file.read_text(encoding="utf-8")
            suffix = args.suffix_file.read_text(encoding="utf-8") if args.suffix_file else ""
        else:
            parser.error("give --prefix-file [--suffix-file], or --file --line --col")
        engine = Engine(config_from_args(args))
        engine.load()
        result = engine.complete(prefix, suffix, single_line=args.single_line)
    except (ModelLoadError, OutOfMemory, ValueError, OSError) as err:
        print(f"fim-lsp: error: {err}", file=sys.stderr)
        return 2
    result.notes.extend(engine.load_errors.values())
    print(json.dumps(result.to_dict(), ensure_ascii=False) if args.json else render(result))
    return 0
