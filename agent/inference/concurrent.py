"""A capture's two models at once, each on its share of the inference threads.

A two-model mode (multi, cross, centroid) hashes a print and a vein frame per capture. Run one
after the other, each model gets all of ``bundle.threads``; run at once, each gets its share and
a core of its own. A small network on a 128-px ROI gains less from a second thread inside one
model (a barrier per layer) than from running beside the other model, and the vein's ROI cut,
quality gate and input conversion are done while the print model runs.
``python bench/e2e.py`` measures both ways (``bundle.concurrent``; docs/dataflow.md).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

import numpy as np

from agent.inference.base import Backend


def threads_per_model(threads: int, models: int, concurrent: bool) -> int:
    """Each model's threads: a share of ``threads`` when the models run at once, else all."""
    if concurrent and models > 1 and threads >= models:
        return threads // models
    return threads


class Runner:
    """Starts each model of a capture; every model but the last runs on a worker thread.

    The runtimes release the interpreter lock while a model runs, so the worker's model and the
    calling thread's work (the next modality's stages, then its model) go on side by side.
    """

    def __init__(self, concurrent: bool) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="infer") if concurrent else None
        self._on_worker: dict[Backend, Future] = {}  # each model's latest run on the worker

    @property
    def concurrent(self) -> bool:
        return self._pool is not None

    def start(self, backend: Backend, x: np.ndarray, last: bool) -> Callable[[], np.ndarray]:
        """Run ``backend`` on ``x``: now on this thread when ``last`` (or when not concurrent),
        else on the worker; the returned call gives the raw outputs, waiting if need be."""
        if self._pool is None or last:
            # a capture that failed before collecting its worker's model left it running: a
            # model must not run on two threads at once
            earlier = self._on_worker.pop(backend, None)
            if earlier is not None:
                wait([earlier])
            raw = backend.infer(x)
            return lambda: raw
        future = self._on_worker[backend] = self._pool.submit(backend.infer, x)
        return future.result

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
