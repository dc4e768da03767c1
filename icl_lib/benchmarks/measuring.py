"""How the benchmarks measure: interleaved medians of wall-clock and CPU time, and peak tensor memory.

Shared by every section of :mod:`icl_lib.benchmarks.bench` and :mod:`icl_lib.benchmarks.bench_llm`.
Peak memory on CPU is the running sum of the tensor allocations minus frees that PyTorch's
profiler reports during the call; on CUDA it is the allocator's peak above what was live before.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

__all__ = ["MIB", "seconds_of", "interleaved_seconds", "peak_bytes"]

MIB = 1 << 20


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (the profiler's native start/stop log lines) for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak of the running sum of CPU tensor allocations minus frees reported during ``fn()``."""
    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    del result
    kineto = getattr(prof.profiler, "kineto_results", None)
    if kineto is None:
        raise RuntimeError("this torch build's profiler exposes no memory events; CPU peak memory is unavailable")
    events = [e for e in kineto.events() if e.name() == "[memory]" and e.device_type() == DeviceType.CPU]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """The most tensor memory ``fn()`` held at once beyond what was live before it (see the module doc)."""
    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            result = fn()
            torch.cuda.synchronize(device)
            del result
            return torch.cuda.max_memory_allocated(device) - before
        if device.type != "cpu":
            raise ValueError(f"peak memory is measured on cpu or cuda only, not {device.type}")
        return _cpu_peak_bytes(fn)


def seconds_of(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def interleaved_seconds(
    calls: dict[str, Callable[[], object]],
    device: torch.device,
    repeats: int,
    warmup: int = 1,
    min_sample_seconds: float = 0.02,
) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall-clock and CPU seconds per call of each function, rounds interleaved.

    A sample is the mean over as many back-to-back calls as make it last at least
    ``min_sample_seconds`` (counted from the first warm-up call), so that sub-millisecond calls are
    not dominated by the clock. CPU seconds are empty on CUDA.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be ≥ 1 and warmup ≥ 0, got repeats={repeats}, warmup={warmup}")
    inner = {}
    for name, fn in calls.items():
        first, _ = seconds_of(fn, device)
        inner[name] = max(1, math.ceil(min_sample_seconds / max(first, 1e-9)))
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    for round_ in range(warmup + repeats):
        for name, fn in calls.items():
            count = inner[name]

            def batch(fn=fn, count=count) -> None:
                for _ in range(count):
                    fn()

            wall, cpu = seconds_of(batch, device)
            if round_ >= warmup:
                samples[name].append((wall / count, cpu / count))
    wall = {name: statistics.median(w for w, _ in values) for name, values in samples.items()}
    cpu = {}
    if device.type == "cpu":
        cpu = {name: statistics.median(c for _, c in values) for name, values in samples.items()}
    return wall, cpu
