"""online_protocol_summary: the statistics of chapter 6's seed study, on a small block."""

import pytest
import torch

import icl_lib as icl


def test_summary_matches_a_direct_computation():
    torch.manual_seed(0)
    block = icl.Block(3, 16, n_heads=3)
    tasks = icl.sample_regression(20, 8, 2, generator=torch.Generator().manual_seed(1))
    s = icl.online_protocol_summary(block, tasks, lr=0.05, at=5)
    sgd = icl.finetune_online(block, tasks, lr=0.05)
    assert s["online SGD"] == pytest.approx(sgd.query_loss[:, 5].median().item())
    with torch.no_grad():
        prompted = block(tasks.truncated(5).tokens)[:, -1, -1]
    direct = (0.5 * (prompted - tasks.targets) ** 2).median().item()
    assert s["in context"] == pytest.approx(direct, rel=1e-4)
    assert s["loss ratio"] == pytest.approx(s["online SGD"] / s["in context"])
    assert -1 <= s["cos_F"] <= 1 and s["size ratio"] > 0


def test_bad_inputs():
    block = icl.Block(3, 4)
    tasks = icl.sample_regression(2, 4, 2, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError):
        icl.online_protocol_summary(block, tasks, lr=0.1, at=5)
    with pytest.raises(TypeError):
        icl.online_protocol_summary(block, tasks.tokens, lr=0.1, at=2)
