"""Markdown for the hover and the JSON for `fimLsp.showCandidates`: the competing completions."""
from __future__ import annotations

import math
from typing import Any

from .service import Offer

CANDIDATE_KEYS = ("model", "text", "perplexity", "tokens", "seconds", "forward_passes", "hole_length")


def _ppl(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "n/a"


def _fence(text: str) -> str:
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}\n{text}\n{ticks}"


def graphs_line(graphs: dict[str, Any]) -> str:
    """Where the model passes run: captured CUDA graphs (count, memory, budget), or the eager path."""
    static = [name for name, on in graphs.get("static", {}).items() if on]
    if not static:
        return "**model passes:** eager (no CUDA graphs)"
    if graphs.get("budgetBytes") is None:  # CPU: static shapes, the decode step torch.compile'd
        return f"**model passes:** static path ({', '.join(static)}): {graphs['count']} static-shape passes"
    return (f"**model passes:** static path ({', '.join(static)}): {graphs['count']} CUDA graphs, "
            f"{graphs['bytes'] / 2**20:.0f} MB of {graphs['budgetBytes'] / 2**20:.0f} MB (graphMemory)")


def candidates_markdown(offer: Offer, graphs: dict[str, Any] | None = None) -> str:
    comp = offer.completion
    winner = comp.winner
    lines = ["### fim-lsp candidates", ""]
    if winner is None:
        return "\n".join(lines + ["_no candidates_"])
    others = [c for c in comp.candidates if c is not winner and math.isfinite(c.perplexity)]
    margin = ""
    if others and math.isfinite(winner.perplexity):
        runner = min(others, key=lambda c: c.perplexity)
        label = runner.model + (f" L={runner.hole_length}" if runner.hole_length else "")
        margin = (f" by {runner.perplexity - winner.perplexity:.3f} perplexity "
                  f"({runner.perplexity / winner.perplexity:.2f}x lower than {label})")
    lines.append(f"**chosen: {winner.model}** (lowest perplexity{margin})"
                 + (" — answered from cache" if offer.from_cache else ""))
    lines.append("")
    for cand in comp.candidates:
        mark = "✓ " if cand is winner else ""
        hole = f", hole {cand.hole_length} tokens" if cand.hole_length else ""
        lines.append(f"#### {mark}{cand.model}: perplexity {_ppl(cand.perplexity)}")
        lines.append(f"{cand.tokens} tokens, {cand.forward_passes} forward passes, {cand.seconds:.3f} s{hole}")
        lines.append(_fence(cand.text or "(empty)"))
        lines.append("")
    stages = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in comp.timings.items())
    lines.append(f"**timings:** {stages}; request {offer.latency_ms:.0f} ms")
    shown = list(graphs.get("fallbacks", {}).values()) if graphs is not None else []
    if graphs is not None:
        lines.append(graphs_line(graphs))
    for note in [*shown, *(n for n in comp.notes if n not in shown)]:
        lines.append(f"_{note}_")
    lines.extend(context_lines(comp))
    return "\n".join(lines)


def _chunk_rows(prompt: Any) -> list[dict[str, Any]]:
    if prompt is None:
        return []
    return [{"path": u.chunk.path, "startLine": u.chunk.start_line, "endLine": u.chunk.end_line,
             "tokens": u.tokens, "source": u.chunk.source} for u in prompt.chunks]


def context_lines(comp: Any) -> list[str]:
    """The project context that went into Qwen's prompt: file, lines, tokens and why."""
    rows = _chunk_rows(comp.qwen_prompt)
    if not rows:
        return []
    total = sum(r["tokens"] for r in rows)
    out = ["", f"**project context:** {len(rows)} chunks, {total} tokens (`fimLsp.showPrompt` shows the prompts)"]
    for r in rows:
        out.append(f"- `{r['path']}` lines {r['startLine'] + 1}-{r['endLine']}, {r['tokens']} tokens ({r['source']})")
    return out


def prompt_json(offer: Offer, mask: str = "<|mask|>") -> dict[str, Any]:
    """What the last completion's models were given: the decoded text of each model's tokens, and the
    context chunks in Qwen's prompt (`dllmContext`: those in the diffusion model's, often fewer). The
    diffusion prompt is shown with the hole of its best-scored candidate as `mask` tokens."""
    comp = offer.completion
    qwen, dllm = comp.qwen_prompt, comp.dllm_prompt
    holes = sorted((c for c in comp.candidates if c.model == "dllm" and c.hole_length),
                   key=lambda c: c.perplexity if math.isfinite(c.perplexity) else math.inf)
    hole = holes[0].hole_length if holes else 0
    return {"uri": offer.uri, "position": {"line": offer.line, "character": offer.character},
            "qwen": qwen.text if qwen is not None else None,
            "dllm": dllm.text(mask * hole) if dllm is not None else None, "dllmHoleLength": hole,
            "context": _chunk_rows(qwen), "dllmContext": _chunk_rows(dllm),
            "promptTokens": dict(comp.prompt_tokens), "fromCache": offer.from_cache}


def candidates_json(offer: Offer) -> dict[str, Any]:
    comp = offer.completion
    cands = []
    for cand in comp.candidates:
        d = cand.to_dict()
        cands.append({k: d[k] for k in CANDIDATE_KEYS})
    shown = offer.inserts[0][1].text if offer.inserts else ""
    return {
        "uri": offer.uri,
        "position": {"line": offer.line, "character": offer.character},
        "winner": comp.winner.model if comp.winner else None,
        "completion": comp.text,
        "inserted": shown,
        "candidates": cands,
        "timings": dict(comp.timings),
        "latencyMs": offer.latency_ms,
        "fromCache": offer.from_cache,
        "notes": list(comp.notes),
    }
