"""Selection and candidate order as the README documents them: the lowest perplexity wins, exact ties
go to the earlier candidate, candidates come Qwen first, then diffusion by ascending hole length.

Random-weight models never tie, so ties are made two ways: constructed candidates, and forced
checkpoints whose every completion is empty (each then scores the same end token on the same prompt,
bit for bit)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from fim_lsp.engine.config import EngineConfig
from fim_lsp.engine.ensemble import Engine, FimRequest
from fim_lsp.engine.results import Generation, Score
from forced import write_forced_pair

PREFIX = "def area(w, h):\n    return "
SUFFIX = "\n\nprint(area(2, 3))\n"


def gen(model: str, text: str, hole: int | None = None) -> Generation:
    return Generation(model=model, text=text, token_ids=list(range(len(text))), forward_passes=1, seconds=0.0,
                      hole_length=hole)


def score(ppl: float) -> Score:
    return Score(perplexity=ppl, mean_logprob=-math.log(ppl), tokens=1, token_logprobs=[-math.log(ppl)])


def select(ppls: list[float | None]):
    gens = [gen("qwen", "a")] + [gen("dllm", f"b{i}", 8 * 2**i) for i in range(len(ppls) - 1)]
    return Engine._select(gens, [None if p is None else score(p) for p in ppls], {})


def test_constructed_candidates_lowest_wins_and_ties_go_to_the_earlier() -> None:
    assert select([3.0, 2.0, 2.5, 4.0]).winner.text == "b0"
    assert select([3.0, 2.5, 2.0, 2.0]).winner.hole_length == 16  # tie between 16 and 32
    assert select([2.0, 2.0, 2.0, 2.0]).winner.model == "qwen"
    assert select([2.0, 1.0, 1.0, 3.0]).winner.text == "b0"
    none = select([None, None, None])  # no scorer: every perplexity is +inf and the first wins
    assert none.winner.model == "qwen" and all(c.perplexity == math.inf for c in none.candidates)


@pytest.fixture(scope="module")
def all_empty(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_forced_pair(tiny_models, tmp_path_factory.mktemp("forced-end"), rule="end")


def config(tiny: Path, **kw) -> EngineConfig:
    base = dict(ar_model=str(tiny / "ar"), dllm_model=str(tiny / "dllm"), device="cpu", max_new_tokens=4,
                steps=2, dllm_lengths=(32, 8, 16, 8))
    return EngineConfig(**{**base, **kw})


def test_candidates_are_qwen_first_then_diffusion_by_ascending_length(tiny_models: Path) -> None:
    """Lengths given out of order and repeated; a batch whose second request is single-line (its own
    lengths): each request gets its own candidates, in the documented order."""
    engine = Engine(config(tiny_models, dllm_lengths_single_line=(16, 4, 8)))
    whole, single = engine.complete_batch([FimRequest(PREFIX, SUFFIX), FimRequest(PREFIX, SUFFIX, single_line=True)])
    assert [(c.model, c.hole_length) for c in whole.candidates] == \
        [("qwen", None), ("dllm", 8), ("dllm", 16), ("dllm", 32)]
    assert [(c.model, c.hole_length) for c in single.candidates] == \
        [("qwen", None), ("dllm", 4), ("dllm", 8), ("dllm", 16)]


@pytest.mark.parametrize("score_reuse", [True, False])
def test_exact_ties_on_real_scores_go_to_qwen(all_empty: Path, score_reuse: bool) -> None:
    out = Engine(config(all_empty, score_reuse=score_reuse)).complete(PREFIX, SUFFIX)
    assert [c.text for c in out.candidates] == [""] * 4
    assert len({c.perplexity for c in out.candidates}) == 1 and math.isfinite(out.candidates[0].perplexity)
    assert out.winner is out.candidates[0] and out.winner.model == "qwen"


def test_exact_ties_among_diffusion_lengths_go_to_the_shortest(all_empty: Path) -> None:
    out = Engine(config(all_empty, models="dllm")).complete(PREFIX, SUFFIX)
    assert [c.hole_length for c in out.candidates] == [8, 16, 32]
    assert len({c.perplexity for c in out.candidates}) == 1
    assert out.winner is out.candidates[0] and out.winner.hole_length == 8
