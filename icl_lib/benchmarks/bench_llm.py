"""Section (h) of the benchmark: the exact patches of the pretrained SmolLM2, against one forward pass.

For one prompt of ``T`` random token ids (batch ``B``) through SmolLM2-135M-Instruct (30 layers,
:func:`icl_lib.load_smollm2`), it times

* ``forward``: ``model(input_ids, use_cache=False, logits_to_keep=1)``, one forward pass, logits
  at the last position only (the cheapest forward pass, the one the patches need: a strict
  baseline);
* ``query``: ``network_update(model, input_ids)``, the patch of every layer for the last token:
  target ≤ 1.15 × ``forward``;
* ``all``: ``network_update(model, input_ids, position="all")``, the patches of every layer for
  every position: target ≤ 1.5 × ``forward``;

with the same interleaved medians as the other sections (:func:`icl_lib.benchmarks.measuring.interleaved_seconds`)
and the peak tensor memory of each call (:func:`icl_lib.benchmarks.measuring.peak_bytes`), and checks that the
patched last token alone reproduces the prompted logits.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.implicit import forward_with_updates, network_update
from .measuring import MIB, interleaved_seconds, peak_bytes

__all__ = [
    "LanguageMeasurement",
    "LLM_LENGTHS",
    "QUERY_TARGET_LLM",
    "ALL_TARGET_LLM",
    "measure_language_model",
    "TRAJECTORY_LENGTHS",
    "TRAJECTORY_TARGET",
    "truncated_trajectory",
    "trajectory_section",
]

LLM_LENGTHS = (128, 512)
QUERY_TARGET_LLM = 1.15
ALL_TARGET_LLM = 1.5


@dataclass(frozen=True)
class LanguageMeasurement:
    """Seconds (wall and CPU medians) and peak MiB per call, for one prompt length and dtype."""

    tokens: int
    batch: int
    dtype: torch.dtype
    wall: dict[str, float]
    cpu: dict[str, float]
    peak_mib: dict[str, float]
    error: float

    def ratio(self, name: str, clock: str = "wall") -> float:
        times = self.wall if clock == "wall" else self.cpu
        return times[name] / times["forward"]


def measure_language_model(
    model: nn.Module, tokens: int, batch: int = 1, repeats: int = 5, seed: int = 0
) -> LanguageMeasurement:
    """Time and memory of ``forward``, ``query`` and ``all`` on random ids ``(batch, tokens)``."""

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, tokens), generator=generator).to(device)
    calls = {
        "forward": lambda: model(ids, use_cache=False, logits_to_keep=1).logits,
        "query": lambda: network_update(model, ids),
        "all": lambda: network_update(model, ids, position="all"),
    }
    with torch.no_grad():
        prompted = calls["forward"]()[:, -1]
        patched = forward_with_updates(model, calls["query"](), ids[:, -1:])
        error = ((patched - prompted).norm() / prompted.norm()).item()
        wall, cpu = interleaved_seconds(calls, device, repeats=repeats)
        peaks = {name: peak_bytes(fn, device) / MIB for name, fn in calls.items()}
    return LanguageMeasurement(tokens, batch, dtype, wall, cpu, peaks, error)


def language_model_section(args: argparse.Namespace, device: torch.device, dtypes: Sequence[torch.dtype]) -> bool:
    """(h): SmolLM2 at ``T`` = 128 and 512; returns whether the patched logits matched."""
    from ..architectures.pretrained import load_smollm2

    lengths = (16,) if args.quick else LLM_LENGTHS
    print("== (h): the pretrained SmolLM2-135M-Instruct (30 layers, width 576, gated MLP 2 x 1536), B = 1")
    print("forward: model(ids, use_cache=False, logits_to_keep=1)   query: network_update(model, ids)   "
          "all: network_update(model, ids, position='all'); ratios to forward")
    print(f"targets: query ≤ {QUERY_TARGET_LLM} x, all ≤ {ALL_TARGET_LLM} x; err: relative error (2-norm) of the "
          "patched last token's logits")
    try:
        base, _ = load_smollm2(torch.float32)
    except ModuleNotFoundError as error:
        print(f"skipped: {error}")
        return True
    passed, lines = True, []
    print(f"{'dtype':8} {'T':>5} {'forward ms':>11} {'query ms':>9} {'all ms':>8} {'query/fw':>9} {'all/fw':>7} "
          f"{'cpu q/fw':>9} {'cpu a/fw':>9} {'peak fw':>8} {'peak q':>7} {'peak all':>9} {'err':>8}")
    for dtype in dtypes:
        model = base.to(dtype).to(device)
        for t in lengths:
            m = measure_language_model(model, t, repeats=args.repeats)
            tolerance = 1e-4 if dtype == torch.float32 else 1e-12
            passed = passed and m.error <= tolerance
            name = str(dtype).replace("torch.", "")
            print(f"{name:8} {t:5d} {1e3 * m.wall['forward']:11.1f} {1e3 * m.wall['query']:9.1f} "
                  f"{1e3 * m.wall['all']:8.1f} {m.ratio('query'):9.2f} {m.ratio('all'):7.2f} "
                  f"{m.ratio('query', 'cpu'):9.2f} {m.ratio('all', 'cpu'):9.2f} {m.peak_mib['forward']:8.1f} "
                  f"{m.peak_mib['query']:7.1f} {m.peak_mib['all']:9.1f} {m.error:8.1e}")
            for key, target in (("query", QUERY_TARGET_LLM), ("all", ALL_TARGET_LLM)):
                verdict = "PASS" if m.ratio(key) <= target else "MISS"
                lines.append(f"{verdict} (h) {key} {name} T={t}: {m.ratio(key):.2f} x (wall; cpu "
                             f"{m.ratio(key, 'cpu'):.2f} x) ≤ {target} x")
    print()
    for line in lines:
        print(line)
    return passed


#: Prompt lengths of the trajectory section; the truncated-prompt method runs at the first only.
TRAJECTORY_LENGTHS = (128, 512, 2048)
TRAJECTORY_TARGET = 4.0  # implicit_trajectory(logits=False) at every length / one forward pass, at T = 512


def truncated_trajectory(model: nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
    """The token-by-token dynamics the way the library computed them before the one-pass method:
    one truncated prompt ``[c_1..c_i, x]`` per length ``i``, its patches and its logits (a
    baseline written with the public API only)."""
    logits = []
    for i in range(ids.shape[1]):
        truncated = torch.cat([ids[:, :i], ids[:, -1:]], dim=1)
        if i:
            network_update(model, truncated)
        logits.append(model(truncated, use_cache=False, logits_to_keep=1).logits[:, -1])
    return logits


def trajectory_section(args: argparse.Namespace, device: torch.device, dtypes: Sequence[torch.dtype]) -> bool:
    """(i): ``implicit_trajectory`` at every context length of one prompt, against one forward pass."""
    from ..architectures.pretrained import load_smollm2
    from ..core.trajectory import implicit_trajectory

    lengths = (16, 32) if args.quick else TRAJECTORY_LENGTHS
    print("== (i): token-by-token dynamics of SmolLM2-135M-Instruct, every context length of one prompt, B = 1")
    print("forward: model(ids, use_cache=False, logits_to_keep=1)   patches: implicit_trajectory(model, ids, "
          "logits=False) (one pass over the context and its copies, one reference pass)   +logits: the same with "
          "the model's logits at every length (the default)   truncated: one prompt per length")
    print(f"target: patches ≤ {TRAJECTORY_TARGET} x forward at T = {TRAJECTORY_LENGTHS[1]}; err: largest "
          "relative error of the trajectory's logits against the model's own on the truncated prompts")
    try:
        base, _ = load_smollm2(torch.float32)
    except ModuleNotFoundError as error:
        print(f"skipped: {error}")
        return True
    passed, lines = True, []
    print(f"{'dtype':8} {'T':>5} {'forward ms':>11} {'patch ms':>9} {'patch/fw':>9} {'cpu p/fw':>9} "
          f"{'+logits/fw':>11} {'trunc/fw':>9} {'peak fw MiB':>12} {'peak p MiB':>11} {'peak +l MiB':>12} {'err':>8}")
    for dtype in dtypes:
        model = base.to(dtype).to(device)
        name = str(dtype).replace("torch.", "")
        for t in lengths:
            generator = torch.Generator().manual_seed(t)
            ids = torch.randint(0, model.config.vocab_size, (1, t), generator=generator).to(device)
            calls = {
                "forward": lambda: model(ids, use_cache=False, logits_to_keep=1).logits,
                "patches": lambda: implicit_trajectory(model, ids, logits=False),
                "trajectory": lambda: implicit_trajectory(model, ids),
            }
            if t == lengths[0]:
                calls["truncated"] = lambda: truncated_trajectory(model, ids)
            with torch.no_grad():
                trajectory = calls["trajectory"]()
                checked = sorted({0, t // 3, t - 1})
                want = torch.stack([model(torch.cat([ids[:, :i], ids[:, -1:]], 1)).logits[:, -1] for i in checked], 1)
                got = trajectory.logits[:, checked]
                error = ((got - want).norm(dim=-1) / want.norm(dim=-1)).max().item()
                del trajectory
                repeats = args.repeats if t <= 512 else 1
                wall, cpu = interleaved_seconds(calls, device, repeats=repeats)
                peaks = {key: peak_bytes(fn, device) / MIB for key, fn in calls.items() if key != "truncated"}
            ratio, cpu_ratio = wall["patches"] / wall["forward"], cpu.get("patches", 0) / cpu.get("forward", 1)
            with_logits = wall["trajectory"] / wall["forward"]
            truncated = f"{wall['truncated'] / wall['forward']:9.1f}" if "truncated" in wall else f"{'':9}"
            print(f"{name:8} {t:5d} {1e3 * wall['forward']:11.1f} {1e3 * wall['patches']:9.1f} {ratio:9.2f} "
                  f"{cpu_ratio:9.2f} {with_logits:11.2f} {truncated} {peaks['forward']:12.1f} "
                  f"{peaks['patches']:11.1f} {peaks['trajectory']:12.1f} {error:8.1e}")
            passed = passed and error <= (1e-4 if dtype == torch.float32 else 1e-12)
            if t == TRAJECTORY_LENGTHS[1]:
                verdict = "PASS" if ratio <= TRAJECTORY_TARGET else "MISS"
                lines.append(f"{verdict} (i) trajectory {name} T={t}: patches {ratio:.2f} x forward (wall) ≤ "
                             f"{TRAJECTORY_TARGET} x (with the logits at every length: {with_logits:.2f} x)")
    print()
    for line in lines:
        print(line)
    return passed
