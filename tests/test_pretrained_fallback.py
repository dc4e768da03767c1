"""load_smollm2 on versions of transformers and gguf whose internals differ from the pinned ones.

The loader patches private names of both packages (``pretrained._patched``): the GGUF reader
module's ``tqdm``, ``gguf.GGUFReader`` and ``gguf.get_tensor_name_map``. These tests give it
stand-in modules that lack those names, and stand-in model classes, so that no model is loaded:
the patch must be skipped (never an error), everything must be restored, and a patched load that
fails must be followed by the plain load. The real load is in test_smollm2.py.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from icl_lib.architectures import pretrained


def standin(monkeypatch, name, **attributes):
    """A module ``name`` holding ``attributes``, importable for the duration of the test."""
    module = types.ModuleType(name)
    for key, value in attributes.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def first(x):
    return ("first", x)


def second(x):
    return ("second", x)


def test_patched_replaces_the_names_and_restores_them(monkeypatch):
    module = standin(monkeypatch, "icl_standin", f=first, g=second)
    with pretrained._patched("icl_standin", f=lambda old: lambda x: old(x * 2)) as patched:
        assert patched
        assert module.f(1) == ("first", 2) and module.g is second
    assert module.f is first and module.g is second


def test_patched_restores_after_an_error_in_the_block(monkeypatch):
    module = standin(monkeypatch, "icl_standin", f=first)
    with pytest.raises(KeyError), pretrained._patched("icl_standin", f=lambda old: second):
        assert module.f is second
        raise KeyError("in the block")
    assert module.f is first


@pytest.mark.parametrize("attributes", [{"f": first}, {"g": second}, {}, {"f": first, "g": 3}],
                         ids=["no-g", "no-f", "neither", "g-not-callable"])
def test_patched_changes_nothing_when_a_name_is_missing(monkeypatch, attributes):
    module = standin(monkeypatch, "icl_standin", **attributes)
    before = dict(vars(module))
    with pretrained._patched("icl_standin", f=lambda old: second, g=lambda old: first) as patched:
        assert not patched
        assert vars(module) == before
    assert vars(module) == before


def test_patched_changes_nothing_when_the_module_does_not_import(monkeypatch):
    monkeypatch.setitem(sys.modules, "icl_standin", None)  # import raises ImportError
    with pretrained._patched("icl_standin", f=lambda old: second) as patched:
        assert not patched
    with pretrained._patched("icl_lib_no_such_module.reader", f=lambda old: second) as patched:
        assert not patched


def test_quiet_transformers_without_tqdm_in_the_reader_module(monkeypatch):
    pytest.importorskip("transformers")
    from transformers.utils import logging

    module = standin(monkeypatch, "icl_standin_reader")  # a reader module with no tqdm
    monkeypatch.setattr(pretrained, "_GGUF_LOADER", "icl_standin_reader")
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    with pretrained._quiet_transformers():
        assert logging.get_verbosity() == logging.ERROR and not logging.is_progress_bar_enabled()
        assert not hasattr(module, "tqdm")
    assert logging.get_verbosity() == verbosity and logging.is_progress_bar_enabled() == bars
    assert not hasattr(module, "tqdm")


def test_quiet_transformers_switches_the_reader_bar_off(monkeypatch):
    pytest.importorskip("transformers")
    calls = []

    def progress(items, **kwargs):
        calls.append(kwargs)
        return items

    module = standin(monkeypatch, "icl_standin_reader", tqdm=progress)
    monkeypatch.setattr(pretrained, "_GGUF_LOADER", "icl_standin_reader")
    with pretrained._quiet_transformers():
        assert module.tqdm([1, 2], desc="tensors") == [1, 2]
    with pretrained._quiet_transformers(patch=False):
        assert module.tqdm is progress
    assert module.tqdm is progress and calls == [{"disable": True, "desc": "tensors"}]


def test_parse_gguf_once_on_a_gguf_without_the_names(monkeypatch):
    module = standin(monkeypatch, "icl_standin_gguf", GGUFReader=first)  # no get_tensor_name_map
    monkeypatch.setattr(pretrained, "_GGUF", "icl_standin_gguf")
    with pretrained._parse_gguf_once():
        assert module.GGUFReader is first and not hasattr(module, "get_tensor_name_map")
    assert module.GGUFReader is first


def test_parse_gguf_once_caches_by_arguments_and_passes_unhashable_ones_through(monkeypatch):
    parsed, maps = [], []

    def reader(path, mode="r"):
        parsed.append((path, mode))
        return object()

    def name_map(arch, n_blocks):
        maps.append((arch, n_blocks))
        return {"arch": arch, "n_blocks": n_blocks}

    module = standin(monkeypatch, "icl_standin_gguf", GGUFReader=reader, get_tensor_name_map=name_map)
    monkeypatch.setattr(pretrained, "_GGUF", "icl_standin_gguf")
    with pretrained._parse_gguf_once():
        assert module.GGUFReader("a.gguf") is module.GGUFReader("a.gguf")
        assert module.GGUFReader("a.gguf") is not module.GGUFReader("a.gguf", mode="c")
        assert module.GGUFReader(["a.gguf"]) is not module.GGUFReader("b.gguf", ["unhashable"])
        assert module.get_tensor_name_map("llama", 30) is module.get_tensor_name_map("llama", 30)
        assert module.get_tensor_name_map(["llama"], 30) == {"arch": ["llama"], "n_blocks": 30}
    assert module.GGUFReader is reader and module.get_tensor_name_map is name_map
    assert parsed == [("a.gguf", "r"), ("a.gguf", "c"), (["a.gguf"], "r"), ("b.gguf", ["unhashable"])]
    assert maps == [("llama", 30), (["llama"], 30)]


class StandinLoader:
    """Stands in for ``AutoTokenizer`` and ``AutoModelForCausalLM``: records each load and whether
    gguf's reader was patched then; ``fail(patched)`` says whether that load raises."""

    def __init__(self, fail=lambda patched: False):
        import gguf

        self.gguf, self.reader, self.fail, self.loads = gguf, gguf.GGUFReader, fail, []

    def from_pretrained(self, folder, gguf_file, **kwargs):
        patched = self.gguf.GGUFReader is not self.reader
        self.loads.append(patched)
        if self.fail(patched):
            raise RuntimeError(f"stand-in failure (patched: {patched})")
        loaded = torch.nn.Linear(2, 2)
        loaded.clean_up_tokenization_spaces = True  # as transformers 5.15 sets it for SmolLM2
        return loaded


@pytest.fixture
def loader(monkeypatch, tmp_path):
    """load_smollm2 with stand-ins for the file and the transformers classes; returns a function
    that installs a StandinLoader with the given failure rule and gives it back."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    monkeypatch.setattr(pretrained, "smollm2_file", lambda: tmp_path / pretrained.SMOLLM2_FILE)

    def install(fail=lambda patched: False):
        standin_loader = StandinLoader(fail)
        monkeypatch.setattr(transformers, "AutoTokenizer", standin_loader)
        monkeypatch.setattr(transformers, "AutoModelForCausalLM", standin_loader)
        return standin_loader

    return install


def test_load_goes_through_the_patch_when_it_works(loader):
    standin_loader = loader()
    model, tokenizer = pretrained.load_smollm2(torch.float64)
    assert standin_loader.loads == [True, True]  # tokenizer, model: one load, patched
    assert model.weight.dtype == torch.float64 and not model.training
    assert tokenizer.clean_up_tokenization_spaces is False


def test_load_without_the_private_names_takes_the_plain_path(loader, monkeypatch):
    standin(monkeypatch, "icl_standin_gguf")  # a gguf with neither name
    monkeypatch.setattr(pretrained, "_GGUF", "icl_standin_gguf")
    monkeypatch.setattr(pretrained, "_GGUF_LOADER", "icl_lib_no_such_module.reader")
    standin_loader = loader()
    model, _ = pretrained.load_smollm2()
    assert standin_loader.loads == [False, False]
    assert model.weight.dtype == torch.float32 and not model.training


def test_load_falls_back_to_the_plain_path_when_the_patched_load_fails(loader):
    import gguf

    standin_loader = loader(fail=lambda patched: patched)
    model, _ = pretrained.load_smollm2()
    assert standin_loader.loads == [True, False, False]  # patched tokenizer fails; plain load
    assert gguf.GGUFReader is standin_loader.reader and not model.training


def test_load_raises_the_plain_error_when_both_loads_fail(loader):
    loader(fail=lambda patched: True)
    with pytest.raises(RuntimeError, match=r"patched: False") as raised:
        pretrained.load_smollm2()
    assert "patched: True" in str(raised.value.__cause__)
