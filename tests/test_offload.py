"""A model dispatched by ``accelerate`` (``device_map``) with layers on the CPU and offloaded to disk.

``accelerate`` loads an offloaded layer's weights for its forward pass and drops them after, so
outside a forward they are on the ``meta`` device. The library's hooks read and patch
activations only (layer inputs, MLP inputs, first-layer outputs, the MLP output), never weights,
so they work on every layer wherever it lives; the factors are gathered on the model's input
device.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TOLERANCE, relative_error
from tiny_lms import build, prompt_ids
from transformers import AutoModelForCausalLM

import icl_lib as icl

MAPS = {
    "llama": ("model", "model.layers", ("model.embed_tokens", "model.norm", "model.rotary_emb")),
    "gemma3": ("model", "model.layers", ("model.embed_tokens", "model.norm", "model.rotary_emb")),
    "gpt2": ("transformer", "transformer.h", ("transformer.wte", "transformer.wpe", "transformer.ln_f")),
    # experts as 3-D weights: the router and experts are read inside accelerate's align_module_device
    "mixtral": ("model", "model.layers", ("model.embed_tokens", "model.norm", "model.rotary_emb")),
}


def _dispatched(family: str, dtype: torch.dtype, folder):
    """The wide model saved, then loaded with layer 0 on the CPU and the others on disk."""
    model = build(family, "wide", 1, dtype)
    model.save_pretrained(folder / "saved")
    _, layers, rest = MAPS[family]
    device_map = {name: "cpu" for name in (*rest, "lm_head")}
    device_map.update({f"{layers}.0": "cpu", f"{layers}.1": "disk", f"{layers}.2": "disk"})
    extra = {"experts_implementation": "eager"} if family == "mixtral" else {}
    loaded = AutoModelForCausalLM.from_pretrained(folder / "saved", device_map=device_map, dtype=dtype,
                                                  offload_folder=folder / "offload", **extra)
    return model, loaded.eval()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("family", sorted(MAPS))
def test_patches_of_a_model_offloaded_to_disk(family, dtype, tmp_path):
    model, offloaded = _dispatched(family, dtype, tmp_path)
    assert {p.device.type for p in offloaded.parameters()} == {"cpu", "meta"}  # really offloaded
    ids = prompt_ids(2, 9, 4)
    with torch.no_grad():
        want = offloaded(ids).logits[:, -1]
        assert relative_error(want, model(ids).logits[:, -1]) <= TOLERANCE[dtype]
    updates = icl.network_update(offloaded, ids)
    assert all(u.u.device.type == "cpu" for u in updates)
    assert relative_error(icl.forward_with_updates(offloaded, updates, ids[:, -1:]), want) <= TOLERANCE[dtype]
    steering = {"gemma3": "bias", "mixtral": "bias"}.get(family, "down")  # "norm": refused offloaded (below)
    updates = icl.network_update(offloaded, ids, steering=steering, kept_tokens=2)
    bound = TOLERANCE[dtype]
    assert relative_error(icl.forward_with_updates(offloaded, updates, ids[:, -2:]), want) <= bound
    trajectory = icl.implicit_trajectory(offloaded, ids, context_lengths=[0, 4, 8])
    with torch.no_grad():
        cut = offloaded(torch.cat([ids[:, :4], ids[:, -1:]], dim=1)).logits[:, -1]
    assert relative_error(trajectory.logits[:, 1], cut) <= TOLERANCE[dtype]
    gaps = icl.block_gaps(offloaded, ids, relative=True)
    assert (gaps <= 100 * TOLERANCE[dtype]).all()


def test_norm_steering_of_an_offloaded_norm_is_refused_with_the_reason(tmp_path):
    _, offloaded = _dispatched("gemma3", torch.float32, tmp_path)
    with pytest.raises(ValueError, match="an offloaded norm cannot do"):
        icl.network_update(offloaded, prompt_ids(1, 6, 0), steering="norm")
