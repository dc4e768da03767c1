"""Section (g)'s peer, timed in this process: the public JAX code, from a local clone of its repository.

The public code of Innocenti & Achour (2025), github.com/francesco-innocenti/generalising-icl,
computes the same every-position updates as section (g). The benchmark compares the two codes only
side by side: both timed in the same process, round by round
(:func:`icl_lib.benchmarks.measuring.interleaved_seconds`), so that the drift of a shared
machine's speed hits both alike. ``python -m icl_lib.benchmarks --sections block --peer-repo PATH``
does that, for a clone at ``PATH`` and with ``jax`` and ``equinox`` installed (neither is a
requirement of this project):

    pip install jax==0.10.2 jaxlib==0.10.2 equinox==0.13.8

Nothing of the public code is copied here: its two modules are imported from the clone and
called through their public functions:

* ``model.Transformer(n_embed=D, n_heads=heads, n_blocks=1, key=..., use_skips=True,
  causal_attn=causal, use_layer_norm=True)``: one pre-LN residual block (GELU, an MLP of width
  4D with two hidden layers), with the attention of the icl_lib block it is timed beside
  (bidirectional or causal; the public code's default is causal);
* ``analytical.compute_implicit_icl_updates(model, C_x, x, block_idx=0, use_skips=True,
  use_layer_norm=True)``: the dense updates ``ΔW (B, T, H, D)`` and ``Δb (B, T, D)`` of every
  position, with the MLP's LayerNorm taken into account (left at its default ``False``, the
  update ignores that LayerNorm: its predictions then missed its block's outputs by a relative
  error of 0.32–0.35 on the benchmark's shapes);
* ``model.compute_vectorised_theory_preds(model, x, ΔW, Δb, 0)``: the block on the query alone
  with each position's update, ``(B, T, D)``; the call ends with ``block_until_ready``.

:func:`load_peer` refuses a clone whose functions lack ``causal_attn`` or ``use_layer_norm``
(versions of the public code before August 2025). The public update divides by
``‖A(x)‖² + 1e-8``, so its predictions match its block's outputs to round-off plus that epsilon:
:func:`peer_call` returns that error.

One thread: XLA's CPU backend picks its own thread count; pin the whole process to one core to
give both codes one (``taskset -c 1 python -m icl_lib.benchmarks --threads 1 ...``). The section
prints the process's CPU affinity.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["PEER_INSTALL", "PeerCode", "load_peer", "peer_call"]

PEER_INSTALL = "pip install jax==0.10.2 jaxlib==0.10.2 equinox==0.13.8"
_NEEDED = {
    "model.py": ("Transformer", "compute_vectorised_theory_preds"),
    "analytical.py": ("compute_implicit_icl_updates",),
}
# Keyword arguments the timing passes, which older versions of the public code lack.
_KEYWORDS = {("model.py", "Transformer"): "causal_attn", ("analytical.py", "compute_implicit_icl_updates"): "use_layer_norm"}


@dataclass(frozen=True)
class PeerCode:
    """The public code's two modules, imported from a clone, and the ``jax`` it runs on."""

    repo: Path
    model: ModuleType
    analytical: ModuleType
    jax: ModuleType
    versions: str


def _import_from(path: Path, name: str) -> ModuleType:
    """Import the file ``path`` as a fresh module named ``name`` (the clone's folder on ``sys.path``)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # the clone's own imports (e.g. its utils.py)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def load_peer(repo: str | Path) -> PeerCode:
    """Import ``model.py`` and ``analytical.py`` of a clone of the public repository at ``repo``.

    Raises:
        FileNotFoundError: ``repo`` is not a folder, or lacks one of the two files.
        ModuleNotFoundError: ``jax`` or ``equinox`` is not installed (the message says how).
        AttributeError: a module lacks a function the timing calls, or a function lacks a keyword
            argument it passes (another version of the code).
    """
    repo = Path(repo).expanduser()
    if not repo.is_dir():
        raise FileNotFoundError(f"--peer-repo {str(repo)!r} is not a folder (a clone of "
                                "github.com/francesco-innocenti/generalising-icl)")
    missing = [name for name in _NEEDED if not (repo / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{repo} lacks {', '.join(missing)}: not a clone of the public repository")
    try:
        import equinox
        import jax
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"timing the public code needs jax and equinox ({error}); "
                                  f"install them with: {PEER_INSTALL}") from error
    jax.config.update("jax_enable_x64", True)  # float64 arrays stay float64; float32 ones are unaffected
    modules = {name: _import_from(repo / name, f"icl_lib_peer_{name[:-3]}") for name in _NEEDED}
    for name, functions in _NEEDED.items():
        absent = [function for function in functions if not hasattr(modules[name], function)]
        if absent:
            raise AttributeError(f"{repo / name} has no {', '.join(absent)}: a version of the public code "
                                 "other than the one timed here")
    for (name, function), keyword in _KEYWORDS.items():
        if keyword not in inspect.signature(getattr(modules[name], function)).parameters:
            raise AttributeError(f"{repo / name}: {function} takes no {keyword} argument: an older version of "
                                 "the public code than the one timed here (August 2025 or later)")
    versions = f"jax {jax.__version__}, equinox {equinox.__version__}"
    return PeerCode(repo, modules["model.py"], modules["analytical.py"], jax, versions)


def peer_call(peer: PeerCode, batch: int, context: int, width: int, heads: int, dtype: torch.dtype,
              causal: bool = False, seed: int = 0) -> tuple[Callable[[], object], float]:
    """The public code's every-position computation on one configuration, ready to time.

    ``causal``: the attention of the block (the public ``causal_attn``), as the icl_lib block it is
    timed beside.

    Returns:
        ``(call, error)``: ``call()`` runs both public functions on a prompt ``(B, N + 1, D)``
        of standard normal tokens and waits for the result; ``error`` is the relative error
        ``max|preds - block(C_x)| / max|block(C_x)|`` of its predictions against its own block's
        prompted outputs at every position: round-off, and the ``1e-8`` its update adds to
        ``‖A(x)‖²``.
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"the peer runs in float32 or float64, got {dtype}")
    jax, jnp = peer.jax, peer.jax.numpy
    jdtype = jnp.float32 if dtype == torch.float32 else jnp.float64
    keys = jax.random.split(jax.random.PRNGKey(seed), 2)
    model = peer.model.Transformer(width, heads, 1, key=keys[0], use_skips=True, causal_attn=causal,
                                   use_layer_norm=True)
    model = jax.tree_util.tree_map(
        lambda leaf: leaf.astype(jdtype) if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.floating)
        else leaf, model)
    prompt = jax.random.normal(keys[1], (batch, context + 1, width), dtype=jdtype)
    query = prompt[:, -1:]

    def call() -> object:
        updates, biases = peer.analytical.compute_implicit_icl_updates(
            model, prompt, query, block_idx=0, use_skips=True, use_layer_norm=True)
        return peer.model.compute_vectorised_theory_preds(model, query, updates, biases, 0).block_until_ready()

    prompted = model.blocks[0](prompt)
    error = float(jnp.abs(call() - prompted).max() / jnp.abs(prompted).max())
    return call, error
