"""Where a runner's work runs: its device and its CUDA streams, made on that device (any cuda:N, not
the current one), and the context that makes them current."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


class Placement:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        with self.device_context():
            # the stream the runner's passes run on, and the one its graphs are captured on
            self.stream = torch.cuda.Stream(device) if self.cuda else None
            self.capture = torch.cuda.Stream(device) if self.cuda else None

    def device_context(self) -> contextlib.AbstractContextManager:
        """The runner's device current (CUDA), on the caller's stream."""
        return torch.cuda.device(self.device) if self.cuda else contextlib.nullcontext()

    @contextlib.contextmanager
    def on_stream(self) -> Iterator[None]:
        """The runner's device and stream current for the block (CPU: nothing to switch)."""
        if not self.cuda:
            yield
            return
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            yield
