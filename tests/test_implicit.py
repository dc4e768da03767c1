"""The theorem, numerically: prompted outputs equal patched context-free outputs.

Every test draws random configurations (sizes, heads, activations, block variants, contextual
layers, masks, positions, dtypes) and compares the block's own forward pass on the prompt with
the patched block on the kept tokens.
"""

from __future__ import annotations

import random

import pytest
import torch
from conftest import TOLERANCE, relative_error
from torch import nn
from torch.func import functional_call

import icl_lib as icl
from icl_lib.core import seeding
from icl_lib.core.architecture import view_of

DTYPES = [torch.float64, torch.float32]
VARIANTS = [dict(), dict(residual=True), dict(residual=True, layer_norm=True)]


def random_block(rng: random.Random, dtype: torch.dtype) -> icl.Block:
    heads = rng.choice([1, 2, 4])
    variant = rng.choice(VARIANTS)
    # LayerNorm of a width-1 token is identically zero (then A(x) = 0 and ΔW is undefined).
    dim = heads * rng.randint(2 if variant.get("layer_norm") else 1, 6)
    contextual = rng.choice(["softmax", "softmax", "linear", "recurrent"])
    causal = contextual != "softmax" or rng.random() < 0.7
    block = icl.Block(
        dim,
        rng.randint(1, 24),
        n_heads=heads,
        causal=causal,
        activation=rng.choice(["relu", "gelu", "tanh", "identity"]),
        contextual=contextual,
        **variant,
    )
    return block.to(dtype)


def random_encoder_layer(rng: random.Random, dtype: torch.dtype, norm_first: bool) -> nn.TransformerEncoderLayer:
    heads = rng.choice([1, 2, 4])
    layer = nn.TransformerEncoderLayer(
        heads * rng.randint(2, 5),  # width ≥ 2: LayerNorm of a width-1 token is zero
        heads,
        rng.randint(1, 24),
        dropout=0.1,
        activation=rng.choice(["relu", "gelu"]),
        batch_first=True,
        norm_first=norm_first,
    )
    return layer.to(dtype).eval()


def random_tokens(rng: random.Random, width: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(rng.randint(1, 5), rng.randint(2, 12), width, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(25))
def test_whole_context_becomes_a_weight_update(seed: int, dtype: torch.dtype):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    block = random_block(rng, dtype)
    tokens = random_tokens(rng, block.dim, dtype)
    update = icl.implicit_update(block, tokens)
    patched = icl.forward_with_update(block, update, tokens[:, -1:])
    assert relative_error(patched, block(tokens)[:, -1]) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(25))
def test_partial_context_any_position(seed: int, dtype: torch.dtype):
    rng = random.Random(100 + seed)
    torch.manual_seed(seed)
    block = random_block(rng, dtype)
    tokens = random_tokens(rng, block.dim, dtype)
    b, t, _ = tokens.shape
    absorb = torch.rand(b, t - 1) < rng.random()
    position = rng.randrange(-t, t)
    update = icl.implicit_update(block, tokens, absorb=absorb, position=position)
    patched = icl.forward_with_update(block, update, tokens, absent=absorb)
    assert relative_error(patched, block(tokens)[:, position]) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(15))
def test_every_position_at_once(seed: int, dtype: torch.dtype):
    rng = random.Random(200 + seed)
    torch.manual_seed(seed)
    block = random_block(rng, dtype)
    tokens = random_tokens(rng, block.dim, dtype)
    update = icl.implicit_update(block, tokens, position="all")
    b, t, _ = tokens.shape
    assert update.u.shape == (b, t, block.hidden) and update.v.shape == (b, block.dim)
    patched = icl.forward_with_update(block, update, tokens[:, -1:])
    assert relative_error(patched, block(tokens)) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("seed", range(8))
def test_pytorch_encoder_layer(seed: int, norm_first: bool, dtype: torch.dtype):
    rng = random.Random(300 + seed)
    torch.manual_seed(seed)
    layer = random_encoder_layer(rng, dtype, norm_first)
    tokens = random_tokens(rng, layer.linear1.in_features, dtype)
    with torch.no_grad():  # lets PyTorch take its fused inference path for the reference
        prompted = layer(tokens)
    update = icl.implicit_update(layer, tokens, position="all")
    assert relative_error(icl.forward_with_update(layer, update, tokens[:, -1:]), prompted) <= 10 * TOLERANCE[dtype]
    b, t, _ = tokens.shape
    absorb = torch.rand(b, t - 1) < 0.5
    partial = icl.implicit_update(layer, tokens, absorb=absorb)
    out = icl.forward_with_update(layer, partial, tokens, absent=absorb)
    assert relative_error(out, prompted[:, -1]) <= 10 * TOLERANCE[dtype]


def _module_patched(block: nn.Module, update: icl.ImplicitUpdate, query: torch.Tensor) -> torch.Tensor:
    """The patch applied the slow, obvious way: swap W → W + ΔW (and b′ → b′ + Δb′) in the
    module's own parameters and call its forward on each query, one example at a time."""
    if isinstance(block, icl.Block):
        w_name, b_name = "mlp.up.weight", "mlp.down.bias"
    else:
        w_name, b_name = "linear1.weight", "linear2.bias"
    params = dict(block.named_parameters())
    outputs = []
    for i in range(query.shape[0]):
        patch = {w_name: params[w_name] + update.delta_W[i]}
        if update.delta_b is not None:
            patch[b_name] = params[b_name] + update.delta_b[i]
        outputs.append(functional_call(block, patch, (query[i : i + 1],))[0, -1])
    return torch.stack(outputs)


@pytest.mark.parametrize("seed", range(12))
def test_dense_patch_through_the_module_itself(seed: int):
    """The factored evaluation agrees with the module's own forward pass on W + ΔW."""
    rng = random.Random(400 + seed)
    torch.manual_seed(seed)
    dtype = torch.float64
    if seed % 3 == 2:
        block = random_encoder_layer(rng, dtype, norm_first=bool(seed % 2))
        width = block.linear1.in_features
    else:
        block, width = random_block(rng, dtype), None
        width = block.dim
    tokens = random_tokens(rng, width, dtype)
    update = icl.implicit_update(block, tokens)
    with torch.no_grad():
        prompted = block(tokens)[:, -1]
        dense = _module_patched(block, update, tokens[:, -1:])
    assert relative_error(dense, prompted) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(10))
def test_whole_network_patch_chain(seed: int, dtype: torch.dtype):
    rng = random.Random(500 + seed)
    torch.manual_seed(seed)
    heads = rng.choice([1, 2])
    dim = heads * rng.randint(2, 5)
    kind = seed % 3
    if kind == 0:
        model = icl.Transformer(
            dim,
            rng.randint(1, 4),
            rng.randint(2, 20),
            n_heads=heads,
            in_dim=rng.randint(1, 5),
            out_dim=rng.randint(1, 3),
            activation=rng.choice(["relu", "gelu", "tanh"]),
            **rng.choice([dict(), dict(layer_norm=False), dict(residual=False, layer_norm=False)]),
        )
        width = model.in_dim
    elif kind == 1:
        layer = nn.TransformerEncoderLayer(dim, heads, 16, dropout=0.0, batch_first=True, norm_first=bool(seed % 2))
        model = nn.TransformerEncoder(layer, rng.randint(1, 3), norm=nn.LayerNorm(dim), enable_nested_tensor=False)
        width = dim
    else:
        model = nn.Sequential(*(icl.Block(dim, 12, heads, residual=True, layer_norm=True) for _ in range(3)))
        width = dim
    model = model.to(dtype).eval()
    tokens = random_tokens(rng, width, dtype)
    updates = icl.network_update(model, tokens)
    assert len(updates) == len(icl.block_inputs(model, tokens))
    with torch.no_grad():
        prompted = model(tokens)[:, -1]
    patched = icl.forward_with_updates(model, updates, tokens[:, -1])
    assert relative_error(patched, prompted) <= 10 * TOLERANCE[dtype]


@pytest.mark.parametrize("seed", range(10))
def test_updates_have_rank_one_and_share_their_right_factor(seed: int):
    rng = random.Random(600 + seed)
    torch.manual_seed(seed)
    block = random_block(rng, torch.float64)
    tokens = random_tokens(rng, block.dim, torch.float64)
    update = icl.implicit_update(block, tokens, position="all")
    dense = update.delta_W  # (B, T, H, D)
    total = dense.sum(dim=1)  # Σ_i ΔW_i, (B, H, D)
    for b in range(tokens.shape[0]):
        nonzero = update.u[b].norm(dim=-1) > 1e-9 * update.u[b].norm()
        ranks = torch.linalg.matrix_rank(dense[b][nonzero]).tolist()
        assert set(ranks) <= {1}
        if update.u[b].sum(0).norm() > 1e-9:
            assert torch.linalg.matrix_rank(total[b]).item() == 1
    # ‖ΔW‖_F = ‖W δ‖ / ‖a‖, computed without forming ΔW
    torch.testing.assert_close(update.frobenius_norm(), dense.flatten(2).norm(dim=-1))


def test_rank_detection_can_fail():
    """The rank check above is not vacuous: a sum of updates with different right factors is not rank 1."""
    torch.manual_seed(0)
    block = icl.Block(6, 10).double()
    first = icl.implicit_update(block, torch.randn(1, 5, 6, dtype=torch.float64))
    second = icl.implicit_update(block, torch.randn(1, 5, 6, dtype=torch.float64))
    assert torch.linalg.matrix_rank(first.delta_W[0] + second.delta_W[0]).item() == 2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(10))
def test_trajectory_is_gradient_descent(seed: int, dtype: torch.dtype):
    rng = random.Random(700 + seed)
    torch.manual_seed(seed)
    block = random_block(rng, dtype)
    tokens = random_tokens(rng, block.dim, dtype)
    traj = icl.implicit_trajectory(block, tokens)
    n = tokens.shape[1] - 1
    assert traj.n_context == n and traj.update.u.shape[1] == n + 1
    assert traj.update.u[:, 0].abs().max() == 0  # nothing absorbed, no update
    h = traj.learning_rate[:, None, None]
    tol = TOLERANCE[dtype]
    for i in range(n):
        w_i, w_next = traj.weights(i), traj.weights(i + 1)
        # W_{i+1} = W_i − h ∇L_i(W_i), with the gradient taken by autograd from L_i
        w_var = w_i.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(traj.loss(i, w_var).sum(), w_var)
        torch.testing.assert_close(grad, traj.gradient(i), rtol=tol, atol=tol * grad.abs().max().item())
        step = w_i - h * grad
        assert relative_error(step, w_next) <= 10 * tol
    # T_{W_i}(x) = T_W(c_1..c_i, x): the block run on each truncated prompt
    with torch.no_grad():
        truncated = torch.stack(
            [block(torch.cat([tokens[:, :i], tokens[:, -1:]], dim=1))[:, -1] for i in range(n + 1)], dim=1
        )
    patched = icl.forward_with_update(block, traj.update, tokens[:, -1:])
    assert relative_error(patched, truncated) <= TOLERANCE[dtype]
    norms = traj.increment_norms()
    expected = torch.stack([(traj.weights(i + 1) - traj.weights(i)).flatten(1).norm(dim=-1) for i in range(n)], 1)
    torch.testing.assert_close(norms, expected, rtol=100 * tol, atol=100 * tol * expected.max().item())


def test_trajectory_chunks_agree():
    """Long contexts are processed in chunks of truncated prompts; the chunking must not matter."""
    import icl_lib.core.trajectory as trajectory

    torch.manual_seed(0)
    block = icl.Block(4, 8, n_heads=2).double()
    tokens = torch.randn(3, 30, 4, dtype=torch.float64)
    whole = icl.implicit_trajectory(block, tokens).update.u
    old = trajectory._CHUNK_ELEMENTS
    try:
        trajectory._CHUNK_ELEMENTS = 3 * 30 * 30 * 4  # four truncated prompts per chunk
        chunked = icl.implicit_trajectory(block, tokens).update.u
    finally:
        trajectory._CHUNK_ELEMENTS = old
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-13)


def test_every_position_updates_stay_factored():
    """No dense (B, T, H, D) tensor is created unless .delta_W is asked for."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestTensor(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel())
            return out

    torch.manual_seed(0)
    b, t, d, hidden = 2, 40, 16, 64
    model = icl.Transformer(d, 2, hidden, n_heads=2)
    tokens = torch.randn(b, t, d)
    dense_size = b * t * hidden * d
    with torch.no_grad():
        with LargestTensor() as probe:
            updates = icl.network_update(model, tokens, position="all")
            icl.forward_with_update(model.blocks[0], updates[0], tokens[:, -1:])
        assert probe.largest < dense_size / 8
        with LargestTensor() as probe:
            updates[0].delta_W
        assert probe.largest == dense_size  # the probe does see dense tensors when they exist


@pytest.mark.parametrize("layer_kind", ["softmax", "linear", "recurrent", "encoder"])
def test_absent_tokens_are_as_if_removed(layer_kind: str):
    """The keep-mask protocol of contextual layers: kept positions see the shortened sequence."""
    torch.manual_seed(1)
    dim = 6
    if layer_kind == "encoder":
        layer = view_of(nn.TransformerEncoderLayer(dim, 2, 12, batch_first=True).double().eval())
        run = lambda z, keep=None: layer.stream(z, keep)[0]  # noqa: E731
    else:
        module = icl.Block(dim, 8, n_heads=2, contextual=layer_kind).attn.double()
        run = module
    tokens = torch.randn(4, 9, dim, dtype=torch.float64)
    keep = torch.rand(4, 9) < 0.6
    keep[:, -1] = True
    masked = run(tokens, keep)
    for b in range(4):
        alone = run(tokens[b : b + 1, keep[b]])
        torch.testing.assert_close(masked[b, keep[b]], alone[0], rtol=1e-12, atol=1e-12)
        assert torch.isfinite(masked[b]).all()


def test_seed_everything_is_deterministic(monkeypatch):
    caller_threads = torch.get_num_threads()
    # the default without ICL_LIB_THREADS (make portability runs the tests with it set to 2)
    monkeypatch.delenv(seeding.THREADS_ENV, raising=False)
    try:
        icl.seed_everything(3)
        first = icl.Block(4, 8)(torch.randn(2, 3, 4))
        icl.seed_everything(3)
        second = icl.Block(4, 8)(torch.randn(2, 3, 4))
        torch.testing.assert_close(first, second, rtol=0, atol=0)
        assert torch.get_num_threads() == 1
        monkeypatch.setenv(seeding.THREADS_ENV, "2")
        icl.seed_everything(0)
        assert torch.get_num_threads() == 2
        monkeypatch.setenv(seeding.THREADS_ENV, "two")
        with pytest.raises(ValueError, match="ICL_LIB_THREADS"):
            icl.seed_everything(0)
    finally:
        torch.set_num_threads(caller_threads)


def test_rows_of_an_update_and_of_task_prompts():
    """``ImplicitUpdate.rows`` and ``TaskPrompts.rows`` take the same batch rows of every field."""
    g = torch.Generator().manual_seed(0)
    update = icl.ImplicitUpdate(
        u=torch.randn(5, 3, 4, generator=g), v=torch.randn(5, 3, 2, generator=g),
        delta_b=torch.randn(5, 3, 2, generator=g), position=None, n_tokens=7,
        position_ids=torch.arange(15).reshape(5, 3),
    )
    index = torch.tensor([4, 1])
    picked = update.rows(index)
    for name in ("u", "v", "delta_b", "position_ids"):
        assert torch.equal(getattr(picked, name), getattr(update, name)[index]), name
    assert (picked.position, picked.n_tokens) == (None, 7)
    assert update.rows(torch.tensor([0])).u.shape == (1, 3, 4)
    no_shift = icl.ImplicitUpdate(update.u, update.v, None, None, 7)
    assert no_shift.rows(index).delta_b is None and no_shift.rows(index).position_ids is None

    prompts = icl.fewshot.TaskPrompts(
        input_ids=torch.arange(20).reshape(5, 4), n_examples=1, kept_tokens=2, example_tokens=2,
        item_position=0, answers=((10,), (11,), (12, 13), (14,), (15,)),
    )
    held = prompts.rows(index)
    assert torch.equal(held.input_ids, prompts.input_ids[index])
    assert held.answers == ((15,), (11,)) and held.kept_tokens == 2 and held.example_tokens == 2
    for bad in (torch.tensor([True, False, True, False, False]), torch.tensor([[0]]), [0, 1]):
        with pytest.raises(ValueError, match="1-d integer tensor"):
            update.rows(bad)
        with pytest.raises(ValueError, match="1-d integer tensor"):
            prompts.rows(bad)
