"""Test helper: the real language server, with a CUDA failure injected where one would happen on a GPU.
This machine has no GPU, so a graph capture cannot fail here and no pass can run out of device memory.

    python tests/faulty_server.py capture -- <fim-lsp arguments>       every graph capture raises
    python tests/faulty_server.py oom-request -- <fim-lsp arguments>   the first static pass after loading
                                                                       runs out of memory
    python tests/faulty_server.py gather -- <fim-lsp arguments>        gathering project context raises"""
from __future__ import annotations

import sys

import torch

from fim_lsp.__main__ import main
from fim_lsp.engine.ensemble import Engine
from fim_lsp.engine.graphs import CaptureError, GraphSet


def inject(fault: str) -> None:
    if fault == "capture":
        def build(self, key, make, inputs):
            raise CaptureError(f"{self.name}: injected, the capture raised")
        GraphSet._build = build
    elif fault == "oom-request":
        run, load, state = GraphSet.run, Engine.load, {"armed": False}

        def loaded(self, *args, **kwargs):
            load(self, *args, **kwargs)
            state["armed"] = True  # warm-up is over: the next pass belongs to a request

        def oom_once(self, key, make, inputs):
            if state["armed"]:
                state["armed"] = False
                raise torch.OutOfMemoryError("injected: CUDA out of memory")
            return run(self, key, make, inputs)
        Engine.load, GraphSet.run = loaded, oom_once
    elif fault == "gather":
        from fim_lsp.context.gather import ContextGatherer

        def gather(self, *args, **kwargs):
            raise RuntimeError("injected: gathering failed")
        ContextGatherer.gather = gather
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    fault, sep, *rest = sys.argv[1:]
    assert sep == "--"
    inject(fault)
    sys.exit(main(rest))
