"""Section (g)'s peer timed in this process: the public JAX code, from a local clone of its repository.

The constants ``icl_lib.benchmarks.bench.PEER_MS`` are one colleague's figures for the public code of
Innocenti & Achour (2025), github.com/francesco-innocenti/generalising-icl. This machine's speed
drifts between runs, so a comparison against fixed figures can be off by the drift; timing both
codes in the same process, round by round (:func:`icl_lib.benchmarks.bench.interleaved_seconds`), is not.
``python -m icl_lib.benchmarks --sections block --peer-repo PATH`` does that, for a clone at ``PATH``
and with ``jax`` and ``equinox`` installed (neither is a requirement of this project):

    pip install jax==0.10.2 jaxlib==0.10.2 equinox==0.13.8

Nothing of the public code is copied here: its two modules are imported from the clone and
called through their public functions, as the colleague timed them:

* ``model.Transformer(n_embed=D, n_heads=heads, n_blocks=1, key=..., use_skips=True,
  use_layer_norm=True)``: one pre-LN residual block (bidirectional attention, GELU, an MLP of
  width 4D with two hidden layers);
* ``analytical.compute_implicit_icl_updates(model, C_x, x, 0, True)``: the dense updates
  ``ΔW (B, T, H, D)`` and ``Δb (B, T, D)`` of every position;
* ``model.compute_vectorised_theory_preds(model, x, ΔW, Δb, 0)``: the block on the query alone
  with each position's update, ``(B, T, D)``; the call ends with ``block_until_ready``.

One thread: XLA's CPU backend picks its own thread count; pin the whole process to one core to
give both codes one (``taskset -c 0 python -m icl_lib.benchmarks --threads 1 ...``). The section prints
the process's CPU affinity.
"""

from __future__ import annotations

import importlib.util
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
        AttributeError: a module lacks a function the timing calls (another version of the code).
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
    versions = f"jax {jax.__version__}, equinox {equinox.__version__}"
    return PeerCode(repo, modules["model.py"], modules["analytical.py"], jax, versions)


def peer_call(peer: PeerCode, batch: int, context: int, width: int, heads: int, dtype: torch.dtype,
              seed: int = 0) -> tuple[Callable[[], object], float]:
    """The public code's every-position computation on one configuration, ready to time.

    Returns:
        ``(call, error)``: ``call()`` runs both public functions on a prompt ``(B, N + 1, D)``
        of standard normal tokens and waits for the result; ``error`` is the relative error
        ``max|preds - block(C_x)| / max|block(C_x)|`` of its predictions against its own block's
        prompted outputs at every position (it ignores the MLP's LayerNorm in its update, so with
        ``use_layer_norm=True`` this is not round-off).
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"the peer runs in float32 or float64, got {dtype}")
    jax, jnp = peer.jax, peer.jax.numpy
    jdtype = jnp.float32 if dtype == torch.float32 else jnp.float64
    keys = jax.random.split(jax.random.PRNGKey(seed), 2)
    model = peer.model.Transformer(width, heads, 1, key=keys[0], use_skips=True, use_layer_norm=True)
    model = jax.tree_util.tree_map(
        lambda leaf: leaf.astype(jdtype) if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.floating)
        else leaf, model)
    prompt = jax.random.normal(keys[1], (batch, context + 1, width), dtype=jdtype)
    query = prompt[:, -1:]

    def call() -> object:
        updates, biases = peer.analytical.compute_implicit_icl_updates(model, prompt, query, 0, True)
        return peer.model.compute_vectorised_theory_preds(model, query, updates, biases, 0).block_until_ready()

    prompted = model.blocks[0](prompt)
    error = float(jnp.abs(call() - prompted).max() / jnp.abs(prompted).max())
    return call, error
