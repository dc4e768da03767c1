"""The benchmark's correctness side: its naive reference, its checks and its report.

No timing is asserted here (timings depend on the machine and its load); these tests check that
the naive dense reference and the library's factored updates agree, that the benchmark's own
checks can fail, and that the quick mode prints the table and one verdict per target.
"""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch
from conftest import TOLERANCE, relative_error

import icl_lib as icl
from icl_lib.benchmarks import bench, measuring

TINY = bench.Size(batch=2, context=7, width=8, depth=2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_naive_dense_updates_equal_the_library_factors(dtype: torch.dtype):
    model, tokens = bench.build_model(TINY, dtype, torch.device("cpu"), seed=3)
    with torch.no_grad():
        updates = icl.network_update(model, tokens, position="all")
        naive = bench.naive_network_update(model, tokens)
    assert len(naive) == TINY.depth
    for update, (dense, shift) in zip(updates, naive):
        assert dense.shape == (TINY.batch, TINY.tokens, TINY.hidden, TINY.width)
        assert relative_error(update.delta_W, dense) <= TOLERANCE[dtype]
        assert relative_error(update.delta_b, shift) <= TOLERANCE[dtype]
    assert bench.dense_error(updates, naive) <= TOLERANCE[dtype]


def test_dense_error_sees_a_wrong_update():
    model, tokens = bench.build_model(TINY, torch.float64, torch.device("cpu"), seed=4)
    with torch.no_grad():
        updates = icl.network_update(model, tokens, position="all")
        naive = bench.naive_network_update(model, tokens)
    dense, shift = naive[1]
    spoiled = dense.clone()
    spoiled[0, 3] += 1e-3 * dense.abs().max()
    assert bench.dense_error(updates, [naive[0], (spoiled, shift)]) > 1e-4


def test_patched_outputs_reproduce_every_position():
    model, tokens = bench.build_model(TINY, torch.float64, torch.device("cpu"), seed=5)
    with torch.no_grad():
        inputs = icl.block_inputs(model, tokens)
        updates = icl.network_update(model, tokens, position="all")
        patched = bench.patched_outputs(model, updates, inputs)
        prompted = inputs[1:] + [model.blocks[-1](inputs[-1])]
    for got, want in zip(patched, prompted):
        assert got.shape == (TINY.batch, TINY.tokens, TINY.width)
        assert relative_error(got, want) <= TOLERANCE[torch.float64]


def test_measurement_of_a_tiny_configuration_is_consistent():
    m = bench.measure(TINY, torch.float64, torch.device("cpu"), repeats=1)
    assert set(m.seconds) == {"forward", "query", "all", "patched", "naive"} == set(m.peak)
    assert all(value > 0 for value in m.seconds.values())
    assert m.naive_error is not None and m.naive_error <= TOLERANCE[torch.float64]
    assert m.theorem_error <= TOLERANCE[torch.float64]
    t, h, d, itemsize = TINY.tokens, TINY.hidden, TINY.width, 8
    # u (B, T, H), delta_b (B, T, D), v (B, D) per block, nothing else.
    assert m.factor_bytes == TINY.depth * TINY.batch * (t * (h + d) + d) * itemsize
    assert m.bound_bytes == TINY.depth * TINY.batch * t * (h + d) * itemsize
    # The profiler-based peak of the every-position update holds at least its own result.
    assert m.peak["all"] >= m.factor_bytes
    assert m.peak["naive"] >= m.dense_bytes


def test_naive_reference_is_skipped_over_its_memory_budget():
    m = bench.measure(TINY, torch.float32, torch.device("cpu"), repeats=1, naive_max_bytes=0)
    assert "naive" not in m.seconds and m.naive_error is None
    assert "skip" in bench.row(m)


def test_cpu_peak_memory_counts_live_tensors():
    x = torch.ones(256, 256, dtype=torch.float64)  # 512 KiB per tensor like it

    def two_live_then_one():
        y = x + 1
        z = y * 2
        del y
        return z + 0.5

    peak = measuring.peak_bytes(two_live_then_one, torch.device("cpu"))
    assert 2 * x.nbytes <= peak < 3 * x.nbytes


def test_targets_report_misses_and_failures():
    m = bench.measure(TINY, torch.float64, torch.device("cpu"), repeats=1)
    slow = dataclasses.replace(m, seconds={**m.seconds, "query": 2.0 * m.seconds["forward"]})
    line = bench.target_lines([slow])[0]
    assert line.startswith("target (b)") and "MISS by 0.80x" in line.split("; by CPU time")[0]
    wrong = dataclasses.replace(m, theorem_error=1.0)
    assert any("FAIL" in line for line in bench.target_lines([wrong]))
    assert not bench.correct([wrong]) and bench.correct([m])


def test_quick_mode_prints_the_table_and_a_verdict_per_target(capsys):
    assert bench.main(["--quick", "--repeats", "1", "--dtype", "float64", "--sections", "grid"]) == 0
    out = capsys.readouterr().out
    for column in ("(a) ms", "(b)/(a)", "(c)/(a)", "(e)/(a)", "naive/(c)", "f/bound", "err naive"):
        assert column in out
    assert "torch.profiler" in out  # the memory method is stated
    rows = [line for line in out.splitlines() if line.startswith("float64")]
    assert len(rows) == 2 * len(bench.QUICK_GRID)  # the full table, then its timings by CPU time
    assert all(len(line.split()) == 22 for line in rows[: len(bench.QUICK_GRID)])
    assert all(len(line.split()) == 11 for line in rows[len(bench.QUICK_GRID) :])
    for target in ("target (b)", "target (c)", "target (d)", "memory of the factors", "check (e)", "check naive"):
        verdicts = [line for line in out.splitlines() if line.startswith(target)]
        assert len(verdicts) == 1 and any(word in verdicts[0] for word in ("PASS", "MISS"))


def test_bad_sizes_and_options_are_refused():
    with pytest.raises(ValueError, match="width"):
        bench.Size(batch=1, context=3, width=1, depth=1)
    with pytest.raises(ValueError, match="context"):
        bench.Size(batch=1, context=0, width=4, depth=1)
    with pytest.raises(SystemExit):
        bench.main(["--repeats", "0"])
    with pytest.raises(TypeError, match="Transformer"):
        bench.naive_network_update(torch.nn.Sequential(icl.Block(4, 8, residual=True)), torch.randn(1, 3, 4))


@pytest.mark.parametrize("position", [-1, "all"])
def test_network_update_equals_block_by_block_updates(position):
    """network_update shares each block's pre-activations with its forward pass and skips the last
    block's MLP tail: the updates are those of implicit_update block by block (v and Δb′ exactly;
    u up to the round-off of a matrix product taken over all positions instead of one)."""
    size = bench.Size(batch=2, context=5, width=8, depth=3)
    model, tokens = bench.build_model(size, torch.float64, torch.device("cpu"), seed=6)
    with torch.no_grad():
        stacked = icl.network_update(model, tokens, position=position)
        inputs = icl.block_inputs(model, tokens)
        for block, z, update in zip(model.blocks, inputs, stacked):
            alone = icl.implicit_update(block, z, position=position)
            torch.testing.assert_close(update.u, alone.u, rtol=1e-13, atol=1e-13 * alone.u.abs().max().item())
            assert torch.equal(update.v, alone.v) and torch.equal(update.delta_b, alone.delta_b)


# ----------------------------------------------------------------------------- (f), (g): one block

BLOCK = bench.BlockSize(batch=3, context=9, width=6, heads=2)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_twin_computes_the_same_block(dtype: torch.dtype, causal: bool):
    block, tokens = bench.build_block(BLOCK, dtype, torch.device("cpu"), causal, seed=1)
    twin = bench.fused_twin(block)
    assert isinstance(twin, torch.nn.TransformerEncoderLayer) and not twin.training and twin.norm_first
    with torch.no_grad():
        want = block(tokens)
        for fastpath in (True, False):
            got = bench.fused_forward(twin, tokens, causal, fastpath=fastpath)
            assert relative_error(got, want) <= TOLERANCE[dtype]
    assert torch.backends.mha.get_fastpath_enabled()  # restored


def test_fused_twin_sees_a_different_block():
    block, tokens = bench.build_block(BLOCK, torch.float64, torch.device("cpu"), causal=True, seed=2)
    twin = bench.fused_twin(block)
    with torch.no_grad():
        bidirectional = bench.fused_forward(twin, tokens, causal=False)
        assert relative_error(bidirectional, block(tokens)) > 1e-3  # the mask matters: the check can fail
        block.mlp.up.weight[0, 0] += 0.5
        assert relative_error(bench.fused_forward(twin, tokens, causal=True), block(tokens)) > 1e-6


def test_fused_twin_refuses_what_the_fused_layer_cannot_hold():
    with pytest.raises(TypeError, match="pre-LN residual"):
        bench.fused_twin(icl.Block(4, 8, residual=True))
    with pytest.raises(TypeError, match="softmax attention"):
        bench.fused_twin(icl.Block(4, 8, residual=True, layer_norm=True, contextual="linear"))
    with pytest.raises(TypeError, match="ReLU or exact GELU"):
        bench.fused_twin(icl.Block(4, 8, residual=True, layer_norm=True, activation="tanh"))


def test_every_position_outputs_reproduce_the_prompted_block():
    block, tokens = bench.build_block(BLOCK, torch.float64, torch.device("cpu"), causal=False, seed=3)
    with torch.no_grad():
        got = bench.every_position_outputs(block, tokens)
        assert got.shape == tokens.shape
        assert relative_error(got, block(tokens)) <= TOLERANCE[torch.float64]


def test_interleaved_seconds_batches_short_calls():
    counts = {"fast": 0}

    def fast():
        counts["fast"] += 1

    # 50 ms per sample: a call that does nothing takes far less even on a loaded machine (with 1 ms
    # the first call alone could exceed it when another process held the core, and failed so)
    wall, cpu = measuring.interleaved_seconds({"fast": fast}, torch.device("cpu"), repeats=3, min_sample_seconds=0.05)
    assert set(wall) == set(cpu) == {"fast"} and wall["fast"] > 0
    assert counts["fast"] > 1 + 4  # the first call, then more than one call per round
    with pytest.raises(ValueError, match="repeats"):
        measuring.interleaved_seconds({"fast": fast}, torch.device("cpu"), repeats=0)


def test_block_measurement_and_its_verdicts():
    m = bench.measure_block(BLOCK, torch.float64, torch.device("cpu"), causal=False, repeats=1)
    assert {"block", "fused", "fused_sdpa", "torch", "update", "attention"} <= set(m.seconds) and m.cpu_seconds
    assert "peer" not in m.seconds and m.peer_ms() is None and m.peer_error is None
    assert m.seconds["torch"] == min(m.seconds["fused"], m.seconds["fused_sdpa"])
    assert m.fused_error <= TOLERANCE[torch.float64] and m.theorem_error <= TOLERANCE[torch.float64]
    assert bench.block_correct([m])
    lines = bench.block_target_lines([m])
    assert lines[0].startswith("target (f)") and "NOT JUDGED (the peer was not timed" in lines[1]
    slow = dataclasses.replace(m, seconds={**m.seconds, "block": 2.0 * m.seconds["torch"]})
    assert "MISS by 0.80x" in bench.block_target_lines([slow])[0].split("; by CPU time")[0]
    wrong = dataclasses.replace(m, theorem_error=1.0)
    assert any("FAIL" in line for line in bench.block_target_lines([wrong])) and not bench.block_correct([wrong])


def _peer_line(m, peer_seconds: float, **seconds: float) -> tuple[str, list[str]]:
    """(g)'s verdict line against a peer time of ``peer_seconds`` (wall clock only), and all lines."""
    timed = dataclasses.replace(m, seconds={**m.seconds, **seconds, "peer": peer_seconds}, cpu_seconds={},
                                peer_error=2.5e-10)
    lines = bench.block_target_lines([timed])
    return [line for line in lines if line.startswith(f"target (g) {m.label}")][0], lines


def test_peer_verdicts_use_the_time_measured_beside_and_name_the_floor():
    m = bench.measure_block(BLOCK, torch.float64, torch.device("cpu"), causal=True, repeats=1)
    u = 1e-3  # (g) takes 1 ms; block, attention: fractions of it
    base = {"update": u, "block": 0.8 * u, "attention": 0.5 * u}
    assert bench.peer_target(BLOCK) == 1.0 and BLOCK.context < bench.PEER_SPEEDUP_CONTEXT
    line, lines = _peer_line(m, 1.2 * u, **base)  # N < 200: no slower than the peer
    assert "peer/(g) >= 1: " in line and ": PASS (1.20x" in line and "floor" not in line
    assert any("rel. error up to 2.5e-10" in text for text in lines)
    line, _ = _peer_line(m, 0.9 * u, **base)  # slower than the peer; neither floor above 0.9 ms
    assert "MISS (11% over)" in line and "no floor above the limit: (g) takes 0.2 ms beyond one forward" in line
    line, _ = _peer_line(m, 0.7 * u, **base)  # one forward pass (0.8 ms) above the limit
    assert "floor: one forward pass of the block" in line and "0.8 ms > 0.7" in line
    line, _ = _peer_line(m, 0.4 * u, **base)  # the attention kernel (0.5 ms) above the limit
    assert "floor: scaled_dot_product_attention alone" in line and "0.5 ms > 0.4" in line
    long = dataclasses.replace(m, size=bench.BlockSize(batch=1, context=200, width=4, heads=2))
    assert bench.peer_target(long.size) == 3.0
    line, _ = _peer_line(long, 3.3 * u, **base)  # N >= 200: 3x faster
    assert "peer/(g) >= 3: " in line and "= 1.1 ms: PASS (3.30x" in line
    line, _ = _peer_line(long, 2.7 * u, **base)  # limit 0.9 ms: above one forward pass (0.8 ms)
    assert "MISS (11% over)" in line and "no floor above the limit" in line
    assert m.peer_ms() is None  # no peer timed, no peer time: there are no constant figures to fall back on


def test_block_grid():
    assert len(bench.BLOCK_GRID) == 5 and len(set(bench.BLOCK_GRID)) == 5
    assert [size.context for size in bench.BLOCK_GRID] == [50, 200, 200, 1000, 1000]
    assert not hasattr(bench, "PEER_MS")  # side by side is the only comparison with the public code
    with pytest.raises(ValueError, match="divisible"):
        bench.BlockSize(batch=1, context=3, width=4, heads=3)


def test_quick_block_section_prints_its_table_and_verdicts(capsys):
    assert bench.main(["--quick", "--repeats", "1", "--dtype", "float32", "--sections", "block"]) == 0
    out = capsys.readouterr().out
    for column in ("block ms", "torch ms", "(f) ratio", "(g) ms", "(g)/block", "attn ms", "peer ms", "peer/(g)"):
        assert column in out
    assert "run ms" not in out and "colleague" not in out
    rows = [line for line in out.splitlines() if line.startswith("float32")]
    assert len(rows) == 2 * 2 * len(bench.QUICK_BLOCK_GRID)  # two attentions; the table, then by CPU time
    assert all(len(line.split()) == 17 and line.split()[-4:-2] == ["-", "-"] for line in rows)  # peer not timed
    assert len([line for line in out.splitlines() if line.startswith("target (f)")]) == 1
    peer_lines = [line for line in out.splitlines() if line.startswith("target (g)")]
    assert len(peer_lines) == 1 and "NOT JUDGED (the peer was not timed in this run" in peer_lines[0]
    assert "peer ms: not timed in this run" in out and "generalising-icl" in out


def test_sections_option():
    with pytest.raises(SystemExit):
        bench.main(["--sections", "grid,nonsense"])
    assert list(bench.SECTIONS) == ["grid", "block", "llm", "trajectory"]


# ----------------------------------------------------------------------------- (g) beside the public code


def _fake_clone(folder, model_source: str) -> None:
    folder.mkdir()
    (folder / "utils.py").write_text("SIZE = 3\n")
    (folder / "model.py").write_text(model_source)
    (folder / "analytical.py").write_text(
        "def compute_implicit_icl_updates(model, C_x, x, block_idx=0, use_skips=True, use_layer_norm=False):\n"
        "    return model\n")


@pytest.fixture
def fake_jax(monkeypatch):
    """Stand-ins for jax and equinox, so that load_peer's import logic runs without them installed."""
    import types

    jax = types.ModuleType("jax")
    jax.__version__ = "0.0-test"
    settings = {}
    jax.config = types.SimpleNamespace(update=settings.__setitem__)
    equinox = types.ModuleType("equinox")
    equinox.__version__ = "0.0-test"
    monkeypatch.setitem(sys.modules, "jax", jax)
    monkeypatch.setitem(sys.modules, "equinox", equinox)
    return settings


def test_load_peer_imports_the_clone_and_names_what_is_missing(tmp_path, fake_jax):
    from icl_lib.benchmarks import bench_peer

    complete = ("from utils import SIZE\nclass Transformer:\n    def __init__(self, n_embed, *, causal_attn=True): pass\n"
                "def compute_vectorised_theory_preds(): pass\n")
    _fake_clone(tmp_path / "clone", complete)
    try:
        peer = bench_peer.load_peer(tmp_path / "clone")
    finally:
        sys.modules.pop("utils", None)  # the fake clone's utils.py, imported by its model.py
    assert peer.model.SIZE == 3 and callable(peer.analytical.compute_implicit_icl_updates)  # its utils imported
    assert peer.versions == "jax 0.0-test, equinox 0.0-test" and fake_jax == {"jax_enable_x64": True}
    assert str(tmp_path / "clone") not in sys.path  # the clone's folder was on sys.path only for the import
    _fake_clone(tmp_path / "other", "class Transformer: pass\n")
    with pytest.raises(AttributeError, match="no compute_vectorised_theory_preds"):
        bench_peer.load_peer(tmp_path / "other")
    # A version from before the public code had causal attention: refused, by name of the argument.
    _fake_clone(tmp_path / "older", "class Transformer:\n    def __init__(self, n_embed): pass\n"
                "def compute_vectorised_theory_preds(): pass\n")
    with pytest.raises(AttributeError, match="Transformer takes no causal_attn argument"):
        bench_peer.load_peer(tmp_path / "older")


def test_load_peer_refuses_what_is_not_a_clone(tmp_path, monkeypatch):
    from icl_lib.benchmarks import bench_peer

    with pytest.raises(FileNotFoundError, match="is not a folder"):
        bench_peer.load_peer(tmp_path / "absent")
    (tmp_path / "model.py").write_text("")
    with pytest.raises(FileNotFoundError, match="lacks analytical.py"):
        bench_peer.load_peer(tmp_path)
    (tmp_path / "analytical.py").write_text("")
    monkeypatch.setitem(sys.modules, "jax", None)  # as if jax were not installed
    with pytest.raises(ModuleNotFoundError, match="pip install jax==0.10.2 jaxlib==0.10.2 equinox==0.13.8"):
        bench_peer.load_peer(tmp_path)


def test_peer_repo_option_is_checked_before_anything_runs(tmp_path, capsys):
    for argv, message in (
        (["--peer-repo", str(tmp_path / "absent"), "--sections", "block"], "is not a folder"),
        (["--peer-repo", str(tmp_path), "--sections", "grid"], "add the block section"),
    ):
        with pytest.raises(SystemExit):
            bench.main(argv)
        assert message in capsys.readouterr().err


def test_attention_alone_is_the_kernel_on_the_blocks_head_shapes():
    size = bench.BlockSize(batch=2, context=5, width=6, heads=3)
    out = bench.attention_alone(size, torch.float64, torch.device("cpu"), causal=True)()
    assert out.shape == (2, 3, 6, 2) and out.dtype == torch.float64
