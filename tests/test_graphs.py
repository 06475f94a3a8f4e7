"""The graph memory budget's bookkeeping: least-recently-used eviction within a set, never across sets,
and the counters fimLsp.stats reads. A captured CUDA graph cannot exist on this machine, so `Graph`
stands for one: an object with the bytes its capture took, replayed by a call."""
from __future__ import annotations

import torch

from fim_lsp.engine.graphs import GraphBudget, GraphSet

CPU = torch.device("cpu")
X = torch.zeros(2)


class Graph:
    def __init__(self, nbytes: int) -> None:
        self.bytes = nbytes
        self.replays = 0

    def __call__(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        self.replays += 1
        return (inputs[0] + 1,)


def add(graphs: GraphSet, name: str, nbytes: int) -> Graph:
    g = Graph(nbytes)
    graphs._add((name, tuple(X.shape)), g)
    return g


def test_past_the_budget_the_least_recently_used_graphs_of_the_set_go_first():
    budget = GraphBudget(limit=100)
    a, b = GraphSet(CPU, "a", budget), GraphSet(CPU, "b", budget)
    first, second = add(a, "k1", 40), add(a, "k2", 40)
    add(b, "k3", 10)
    assert (budget.used, budget.count) == (90, 3) and budget.fits(10) and not budget.fits(11)
    a.run("k1", lambda: None, [X])  # a replay makes k1 the most recently used
    assert first.replays == 1 and second.replays == 0
    assert a._make_room(30)  # 90 + 30 > 100: k2, the least recently used, goes
    assert a.keys() == [("k1", (2,))] and (a.count, a.bytes, a.evicted) == (1, 40, 1)
    assert not a._make_room(200)  # cannot fit even alone: every graph of a goes, none of b's
    assert (a.count, a.bytes, b.count, b.bytes) == (0, 0, 1, 10)
    assert budget.used == 10


def test_the_graph_just_captured_is_never_its_own_victim():
    budget = GraphBudget(limit=50)
    a = GraphSet(CPU, "a", budget)
    add(a, "new", 40)  # kept even where it would be the first victim
    add(a, "old", 30)  # over the budget until this one goes
    assert a._make_room(0, keep=("new", (2,)))
    assert a.keys() == [("new", (2,))] and budget.used == 40
    a.close()
    assert a not in budget.sets and budget.used == 0


def test_compiled_keys_of_one_function_do_not_share_dynamos_recompile_limit():
    """Every key (and every runner) compiles the same inner function; dynamo's recompile limit is per
    code object, so it is lowered to 2 here to reach it in three keys instead of nine."""
    import torch._dynamo

    def step_of(scale: float):
        def step(x: torch.Tensor) -> tuple[torch.Tensor]:
            return (x * scale + 1,)
        return step

    graphs = GraphSet(torch.device("cpu"), "test", compile_mode="default")
    with torch._dynamo.config.patch(recompile_limit=2):
        for n in (2, 3, 4):
            (out,) = graphs.run("step", lambda n=n: step_of(float(n)), [torch.ones(n)])
            assert torch.equal(out, torch.full((n,), n + 1.0))
    assert len(graphs) == 3
