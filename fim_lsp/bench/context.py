"""python -m fim_lsp.bench.context: how often project context puts the right definition in the prompt.

No weights needed. On installed packages' source trees (real code nobody here wrote), it samples holes
whose line uses a name defined in exactly one other file (see context_holes.py), simulates an editor
session for each (the cursor's file open, `--open-files` other files of the tree open at random,
`--edits` recent one-line edits at random lines of those files), and for each strategy

  local       the local window alone (today's prompt)
  +open       + chunks of the open files and of the current file beyond the window
  +defs       + definitions of the names near the cursor, from the workspace index
  +edits      + recently edited ranges (all sources: the default)

reports recall: the share of holes whose definition line is in a chunk that went into Qwen's prompt
at the default budget, and (all sources) into the diffusion prompt at each `--dllm-context` N. It also
reports the gathering time per request (p50/p99 ms) and, with `--model-pass`, one Qwen prompt pass at
the measured prompt lengths on random weights at the real 0.5B shape, timed in the same run.

  python -m fim_lsp.bench.context --package jinja2 --package _pytest --holes 200 --model-pass"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fim_lsp.context import ContextGatherer, ContextSettings, Cursor, DefinitionIndex, EditTracker, Privacy
from fim_lsp.engine.prompt import SegmentCache, dllm_prompt, qwen_prompt
from fim_lsp.engine.requests import PromptBudget
from fim_lsp.percentile import percentile
from fim_lsp.server.context import UTF32, extract
from fim_lsp.server.settings import ServerSettings

from .context_holes import Hole, python_files, sample_holes

ROOT = Path(__file__).resolve().parents[2]
STRATEGIES: dict[str, dict[str, bool]] = {
    "local": {},
    "+open": {"context_open_files": True, "context_same_file": True},
    "+defs": {"context_open_files": True, "context_same_file": True, "context_definitions": True},
    "+edits": {"context_open_files": True, "context_same_file": True, "context_definitions": True,
               "context_edits": True},
}
OFF = {"context_open_files": False, "context_same_file": False, "context_definitions": False, "context_edits": False}


@dataclass
class PackageResult:
    package: str
    files: int
    holes: int
    index_ms: float
    index_definitions: int
    qwen_hits: dict[str, int] = field(default_factory=dict)  # strategy -> holes whose definition went in
    total_hits: dict[int, int] = field(default_factory=dict)  # Qwen total budget -> hits (all sources)
    dllm_hits: dict[int, int] = field(default_factory=dict)  # N -> hits (all sources)
    gather_ms: list[float] = field(default_factory=list)  # all sources, the session's first request
    gather_warm_ms: list[float] = field(default_factory=list)  # all sources, after one more key
    prompt_ms: list[float] = field(default_factory=list)  # Qwen prompt assembly (tokenizing), all sources
    prompt_warm_ms: list[float] = field(default_factory=list)  # the same after one more key
    qwen_tokens: dict[str, list[int]] = field(default_factory=dict)  # strategy -> prompt lengths
    context_chunks: list[int] = field(default_factory=list)  # chunks gathered (all sources)


def package_root(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name!r} is not an installed package (a folder) in this Python")
    return Path(list(spec.submodule_search_locations)[0])


def session(hole: Hole, files: dict[Path, str], open_count: int, edit_count: int,
            rng: random.Random) -> tuple[str, dict[Path, str], list[tuple[Path, int]]]:
    """The cursor's document (the middle cut out), the open documents, and the edited lines."""
    lines = files[hole.path].split("\n")
    cursor_line = lines[hole.line][:hole.column]
    doc = "\n".join(lines[:hole.line] + [cursor_line] + lines[hole.line + 1:])
    others = [p for p in files if p != hole.path]
    opened = rng.sample(others, min(open_count, len(others)))
    docs = {hole.path: doc, **{p: files[p] for p in opened}}
    edits = [(p, rng.randrange(files[p].count("\n") + 1)) for p in rng.choices(opened, k=edit_count)] if opened else []
    return doc, docs, edits


def keystroke(gatherer: ContextGatherer, hole: Hole, doc: str, docs: dict[Path, str], window: tuple[int, int],
              tok: Any, budget: PromptBudget, cache: SegmentCache) -> tuple[float, float]:
    """ms to gather again, and to assemble Qwen's prompt again, after one more character is typed (the
    open files already cut, the chunks' ids in the cache)."""
    lines = doc.split("\n")
    typed = lines[hole.line] + "x"
    after = "\n".join(lines[:hole.line] + [typed] + lines[hole.line + 1:])
    assert gatherer.edits is not None
    gatherer.edits.record(hole.path, hole.line, hole.line, typed)
    t = time.perf_counter()
    context = gatherer.gather(Cursor(hole.path, after, hole.line, window), {**docs, hole.path: after})
    gathered = time.perf_counter()
    ctx = extract(after, hole.line, len(typed), UTF32, ServerSettings().prefix_lines, ServerSettings().suffix_lines)
    start = time.perf_counter()
    qwen_prompt(tok, ctx.prefix, ctx.suffix, context, budget, cache)
    return (gathered - t) * 1000, (time.perf_counter() - start) * 1000


def hit(chunks: Any, hole: Hole, root: Path) -> bool:
    rel = hole.definition.path.relative_to(root).as_posix()
    return any(u.chunk.path == rel and hole.definition.header in u.chunk.text for u in chunks)


def run_package(name: str, root: Path, tok: Any, holes_wanted: int, seed: int, open_count: int,
                edit_count: int, dllm_ns: list[int], totals: list[int]) -> PackageResult:
    files = python_files(root)
    holes = sample_holes(files, holes_wanted, seed)
    privacy = Privacy([root])
    index = DefinitionIndex(privacy)
    t = time.perf_counter()
    progress = index.build()
    result = PackageResult(name, len(files), len(holes), (time.perf_counter() - t) * 1000, progress.definitions)
    server = ServerSettings()
    budget = PromptBudget()
    gatherers = {s: ContextGatherer(privacy, EditTracker(), index, ContextSettings(**{**OFF, **on}))
                 for s, on in STRATEGIES.items()}
    cache = SegmentCache(tok)  # the server keeps one for its session
    rng = random.Random(seed)
    for hole in holes:
        doc, docs, edits = session(hole, files, open_count, edit_count, rng)
        ctx = extract(doc, hole.line, hole.column, UTF32, server.prefix_lines, server.suffix_lines)
        window = (max(0, hole.line - server.prefix_lines), hole.line + server.suffix_lines + 1)
        for strategy, gatherer in gatherers.items():
            assert gatherer.edits is not None
            for path, line in edits:
                gatherer.edits.record(path, line, line, docs[path].split("\n")[line])
            context = None
            if strategy != "local":
                t = time.perf_counter()
                context = gatherer.gather(Cursor(hole.path, doc, hole.line, window), docs)
                if strategy == "+edits":
                    result.gather_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            qwen = qwen_prompt(tok, ctx.prefix, ctx.suffix, context, budget, cache if strategy == "+edits" else None)
            result.qwen_tokens.setdefault(strategy, []).append(len(qwen.ids))
            result.qwen_hits[strategy] = result.qwen_hits.get(strategy, 0) + hit(qwen.chunks, hole, root)
            if strategy == "+edits":
                result.prompt_ms.append((time.perf_counter() - t) * 1000)
                warm = keystroke(gatherer, hole, doc, docs, window, tok, budget, cache)
                result.gather_warm_ms.append(warm[0])
                result.prompt_warm_ms.append(warm[1])
                result.context_chunks.append(len(context.chunks) if context else 0)
                for total in totals:
                    p = qwen_prompt(tok, ctx.prefix, ctx.suffix, context,
                                    dataclasses.replace(budget, total_tokens=total))
                    result.total_hits[total] = result.total_hits.get(total, 0) + hit(p.chunks, hole, root)
                for n in dllm_ns:
                    d = dllm_prompt(tok, ctx.prefix, ctx.suffix, context,
                                    dataclasses.replace(budget, dllm_context_tokens=n))
                    result.dllm_hits[n] = result.dllm_hits.get(n, 0) + hit(d.chunks, hole, root)
            for path in docs:
                gatherer.edits.forget(path)  # the session ends: its documents close
    return result


def model_pass_ms(tok: Any, lengths: list[int], repeats: int = 2) -> dict[int, float]:
    """One Qwen prompt pass (fp32, CPU, random weights at the real shape) per length, best of `repeats`:
    the whole network over the prompt and the last position's logits, as the engine's prompt pass."""
    import torch

    from .models import SHAPES, random_model

    shape = SHAPES["real"]
    model = random_model(shape, max(shape.vocab_rows, len(tok)), 1, tok.convert_tokens_to_ids("<|endoftext|>"))
    model.eval()
    out = {}
    with torch.inference_mode():
        model(torch.randint(0, 150000, (1, 16)), logits_to_keep=1)  # first-call costs out of the timing
        for n in lengths:
            ids = torch.randint(0, 150000, (1, n))
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                model(ids, logits_to_keep=1)
                best = min(best, time.perf_counter() - t)
            out[n] = best * 1000
    return out


def _pct(hits: int, n: int) -> str:
    return f"{100 * hits / n:.1f}%" if n else "-"


def report(results: list[PackageResult], dllm_ns: list[int], totals: list[int], models: dict[int, float] | None,
           lengths: dict[str, int]) -> str:
    n = sum(r.holes for r in results)
    names = [r.package for r in results]
    out = ["| strategy | Qwen prompt tokens p50 | " + " | ".join(f"recall {p}" for p in names) + " | recall, all |",
           "|---|---:|" + "---:|" * (len(names) + 1)]
    for s in STRATEGIES:
        tokens = percentile([float(t) for r in results for t in r.qwen_tokens.get(s, [])], 0.5) or 0
        cells = [_pct(r.qwen_hits.get(s, 0), r.holes) for r in results]
        hits = sum(r.qwen_hits.get(s, 0) for r in results)
        out.append(f"| {s} | {tokens:.0f} | " + " | ".join(cells) + f" | {_pct(hits, n)} |")
    out += ["", "| all sources | " + " | ".join(f"recall {p}" for p in names) + " | recall, all |",
            "|---|" + "---:|" * (len(names) + 1)]
    for total in totals:
        cells = [_pct(r.total_hits.get(total, 0), r.holes) for r in results]
        out.append(f"| Qwen, total {total} | " + " | ".join(cells)
                   + f" | {_pct(sum(r.total_hits.get(total, 0) for r in results), n)} |")
    for k in dllm_ns:
        cells = [_pct(r.dllm_hits.get(k, 0), r.holes) for r in results]
        out.append(f"| diffusion, N = {k} | " + " | ".join(cells)
                   + f" | {_pct(sum(r.dllm_hits.get(k, 0) for r in results), n)} |")
    gather = [x for r in results for x in r.gather_ms]
    warm = [x for r in results for x in r.gather_warm_ms]
    prompt = [x for r in results for x in r.prompt_ms]
    prompt_warm = [x for r in results for x in r.prompt_warm_ms]
    out += ["", "| per request (all sources) | p50 ms | p99 ms |", "|---|---:|---:|",
            f"| gathering, the session's first request | {percentile(gather, 0.5):.2f} | "
            f"{percentile(gather, 0.99):.2f} |",
            f"| gathering, after one more key | {percentile(warm, 0.5):.2f} | {percentile(warm, 0.99):.2f} |",
            f"| Qwen prompt assembly (tokenizing), the session's first request | {percentile(prompt, 0.5):.2f} | "
            f"{percentile(prompt, 0.99):.2f} |",
            f"| Qwen prompt assembly, after one more key | {percentile(prompt_warm, 0.5):.2f} | "
            f"{percentile(prompt_warm, 0.99):.2f} |"]
    if models:
        for label, length in lengths.items():
            out.append(f"| one Qwen prompt pass, {length} tokens ({label} p50 length; fp32 CPU, random real-shape "
                       f"weights, this run) | {models[length]:.0f} | |")
    out += ["", "| package | files | holes | index build ms | definitions indexed | chunks gathered, mean |",
            "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        mean = sum(r.context_chunks) / len(r.context_chunks) if r.context_chunks else 0
        out.append(f"| {r.package} | {r.files} | {r.holes} | {r.index_ms:.0f} | {r.index_definitions} | {mean:.1f} |")
    return "\n".join(out)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fim_lsp.bench.context", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--package", action="append", help="an installed package (repeatable; default jinja2 and _pytest)")
    p.add_argument("--root", type=Path, action="append", help="a source folder instead of a package (repeatable)")
    p.add_argument("--holes", type=int, default=200, help="holes per package")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--open-files", type=int, default=4, help="other files of the tree open in the session")
    p.add_argument("--edits", type=int, default=3, help="recent one-line edits, at random lines of the open files")
    p.add_argument("--dllm-context", type=_ints, default=[0, 256, 512, 1024], help="diffusion context budgets N")
    p.add_argument("--totals", type=_ints, default=[2048, 4096, 8192], help="Qwen total budgets compared")
    p.add_argument("--model-pass", action="store_true",
                   help="also time one Qwen prompt pass at the p50 prompt lengths (random real-shape weights, CPU)")
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--json", type=Path, help="write every figure here")
    args = p.parse_args(argv)
    tok_dir = args.data_dir / "tokenizers" / "qwen2.5-coder"
    if not (tok_dir / "tokenizer.json").is_file():
        print(f"the Qwen2.5-Coder tokenizer is not at {tok_dir}; pass --data-dir", file=sys.stderr)
        return 2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    trees = [(str(r), r) for r in args.root or []]
    if not trees or args.package:
        trees += [(name, package_root(name)) for name in args.package or ["jinja2", "_pytest"]]
    results = [run_package(name, root, tok, args.holes, args.seed, args.open_files, args.edits, args.dllm_context,
                           args.totals) for name, root in trees]
    lengths = {s: int(percentile([float(t) for r in results for t in r.qwen_tokens.get(s, [])], 0.5) or 0)
               for s in ("local", "+edits")}
    models = model_pass_ms(tok, sorted(set(lengths.values()))) if args.model_pass else None
    print(report(results, args.dllm_context, args.totals, models, lengths))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "results": [dataclasses.asdict(r) for r in results],
                                         "model_pass_ms": models}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
