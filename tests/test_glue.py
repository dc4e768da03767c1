"""icl_lib.glue: the formatted text is glued with myst-nb, or printed where myst-nb is absent."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch

import icl_lib as icl


def test_glue_stores_the_formatted_text_hidden(monkeypatch):
    calls = []
    import myst_nb

    monkeypatch.setattr(myst_nb, "glue", lambda *args, **kwargs: calls.append((args, kwargs)))
    icl.glue("loss", torch.tensor(0.12345), ".3f")
    icl.glue("gap", np.float64(3.21e-8), ".1e")
    icl.glue("label", "ok")
    assert calls == [(("loss", "0.123"), {"display": False}), (("gap", "3.2e-08"), {"display": False}),
                     (("label", "ok"), {"display": False})]


def test_glue_prints_where_myst_nb_is_absent(monkeypatch, capsys):
    real_import = builtins.__import__

    def no_myst_nb(name, *args, **kwargs):
        if name.startswith("myst_nb"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_myst_nb)
    icl.glue("share", 0.5, ".0%")
    assert capsys.readouterr().out == "share = 50%\n"


@pytest.mark.parametrize("bad", ["", "1st", "a b", "x.y", None])
def test_bad_names_raise(bad):
    with pytest.raises(ValueError, match="glue name"):
        icl.glue(bad, 1.0)


def test_myst_nb_glue_output_is_what_the_prose_test_reads(capsys):
    """The stored bundle: a hidden text/plain under myst-nb's record prefix, named in scrapbook."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    outputs = []
    shell.display_pub.publish = lambda data, metadata=None, **kwargs: outputs.append((data, metadata))
    icl.glue("ratio", 154.0, ".0f")
    assert outputs == [({"application/papermill.record/text/plain": "'154'"},
                        {"scrapbook": {"name": "ratio", "mime_prefix": "application/papermill.record/"}})]
