"""Where a slide's time goes: wall-clock seconds by phase, for summary.json's `seconds_by_phase`.

Phases are timed where the slide's process waits on them: `read` is the time the pipeline waited for
tiles (reads that overlap the model are hidden behind it, as they should be), `model` the predictor's
forwards (synchronised on a GPU, so its queued work is not billed to whatever waits next). What no phase
covers (batching, argmax, progress) is `other`, so the phases add up to the slide's `seconds`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

PHASES = ("tissue", "stain", "read", "model", "stitch", "vector", "write")


class Phases:
    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.start = time.perf_counter()

    @contextmanager
    def time(self, phase: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - t

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def record(self) -> dict[str, float]:
        """Seconds by phase so far, rounded, with `other` the rest of the time since the start."""
        out = {k: round(v, 3) for k, v in self.seconds.items()}
        out["other"] = round(max(0.0, self.elapsed() - sum(self.seconds.values())), 3)
        return out


class TimedPredictor:
    """A predictor whose `scores` are billed to the `model` phase; everything else passes through."""

    def __init__(self, predictor, phases: Phases):
        self._predictor, self._phases = predictor, phases

    def __getattr__(self, name: str):
        return getattr(self._predictor, name)

    def scores(self, images01: torch.Tensor, *args, **kwargs):
        with self._phases.time("model"):
            out = self._predictor.scores(images01, *args, **kwargs)
            if images01.device.type == "cuda":
                torch.cuda.synchronize(images01.device)
        return out
