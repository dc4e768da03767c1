"""Numbers for the prose: a chapter glues each number its text quotes from the cell that computes it.

A chapter calls ``glue("name", value, ".3f")`` in the cell that computes ``value`` and writes
the ``glue:text`` role (with the name) in its markdown. In the book (myst-nb installed) the formatted text is
stored in the cell's output with myst-nb's ``glue``, hidden, and pasted into the prose when the
book is built, so the text cannot contradict the computation; nbval compares the stored text
like any other output. Where myst-nb is absent (Colab), the value is printed instead,
``name = text``, so that the chapter still runs and the reader still sees it.

A round-off figure is glued with ``fmt=".1e"`` from a cell that asserts a bound on it, like a
printed one: the sanitizer of ``make nbval`` masks it in the stored text as well.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["glue"]

_NAME = re.compile(r"[A-Za-z][\w-]*")


def glue(name: str, value: Any, fmt: str = "") -> None:
    """Glue ``format(value, fmt)`` under ``name``, for the ``glue:text`` role in the prose.

    Args:
        name: the key, letters, digits, ``_`` and ``-``, starting with a letter; unique within
            a chapter.
        value: a number (a Python or NumPy scalar, or a one-element tensor) or a string.
        fmt: a format specification, as in ``f"{value:fmt}"`` (``".3f"``, ``".1e"``, ``".0%"``).

    Raises:
        ValueError: if ``name`` is not a valid key.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"a glue name is letters, digits, _ and -, starting with a letter; got {name!r}")
    if hasattr(value, "item"):  # NumPy scalars and one-element tensors
        value = value.item()
    text = format(value, fmt)
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        print(f"{name} = {text}")
    else:
        myst_glue(name, text, display=False)
