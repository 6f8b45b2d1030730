"""Meshes from strings, the rule table's placements, sharded init, and the same numbers on every mesh.

Equivalence: logits, greedy sampler tokens, one GRPO step and one SFT step (loss, gradient norm, new
params) on meshes 1, 8, 2x4, 4x2 (and fsdp=2,expert=4 for MoE) match the one-device run in f32.
"""
import dataclasses
import functools

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from r1jax import sharding
from r1jax.config import GRPOConfig, ModelConfig, MoEConfig, OptimizerConfig, SamplingSettings
from r1jax.data.packing import Example, pack
from r1jax.model import Transformer, init_cache, init_params
from r1jax.sampling import Sampler
from r1jax.rl.grpo_step import GRPOBatch, make_grpo_step
from r1jax.train.optim import init_train_state, make_optimizer
from r1jax.train.sft_step import make_sft_step

DENSE = ModelConfig.tiny(vocab_size=48, num_layers=1)  # one layer each: compiles dominate this file's time
MOE = ModelConfig.tiny(vocab_size=48, num_layers=1, moe=MoEConfig(num_experts=4, top_k=2, expert_dim=16,
                                                                  num_shared_experts=1))
ZERO = dataclasses.replace(DENSE, params_over_data=True)  # same params, split over data × fsdp
CONFIGS = {"dense": DENSE, "moe": MOE, "zero": ZERO}
MESHES = ["8", "2x4", "4x2"]
GRPO = GRPOConfig(group_size=2, prompts_per_step=4, sampling=SamplingSettings(max_new_tokens=6), logprob_chunk=4,
                  num_minibatches=1)
TX = make_optimizer(OptimizerConfig(learning_rate=1e-2))


def _mesh(spec):
    return sharding.make_mesh(spec, jax.devices()[:1] if spec == "1" else None)


# ------------------------------------------------------------------------------------------- mesh specs
@pytest.mark.parametrize("spec, shape, names", [
    ("8", (8,), ("fsdp",)), ("2x4", (2, 4), ("data", "fsdp")), ("4X2", (4, 2), ("data", "fsdp")),
    ("-1x2", (4, 2), ("data", "fsdp")), ("2x-1", (2, 4), ("data", "fsdp")),
    ("1x2x4", (1, 2, 4), ("data", "fsdp", "expert")),
    ("2x2x1x2", (2, 2, 1, 2), ("data", "fsdp", "expert", "tensor")), (None, (8,), ("fsdp",)), ("-1", (8,), ("fsdp",)),
    ("fsdp=2,expert=4", (2, 4), ("fsdp", "expert")), ("data=2, fsdp=-1", (2, 4), ("data", "fsdp")),
    ("tensor=8", (8,), ("tensor",))])
def test_mesh_specs_parse(spec, shape, names):
    assert sharding.parse_mesh(spec, 8) == (shape, names)


@pytest.mark.parametrize("spec, message", [
    ("3x2", "needs 6 devices"), ("16", "JAX_NUM_CPU_DEVICES=16"), ("-1x3", "do not divide"),
    ("-1x-1", "at most one axis may be -1"), ("foo=8", "unknown axis name"), ("data=2,data=4", "named twice"),
    ("data=2,4", "is not name=size"), ("2x2x2x1x1", "5 axes"), ("axb", "must be integers"), ("0x8", "positive")])
def test_bad_mesh_specs_raise_naming_the_spec(spec, message):
    with pytest.raises(ValueError, match=message) as err:
        sharding.parse_mesh(spec, 8)
    assert repr(spec) in str(err.value)


def test_make_mesh_has_auto_axes_over_the_given_devices():
    mesh = sharding.make_mesh("2x4")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4} and set(mesh.axis_types) == {AxisType.Auto}
    assert sharding.single_device_mesh().devices.size == 1
    assert sharding.make_mesh("1", jax.devices()[:1]).devices.flat[0] == jax.devices()[0]


# ------------------------------------------------------------------------------------------- rule table
def test_dense_weights_shard_embed_over_fsdp_and_batches_over_data_axes():
    mesh = _mesh("2x4")
    specs = jax.tree.map(lambda s: s.spec, sharding.param_shardings(DENSE, mesh))
    assert specs["layers_0"]["mlp"]["gate"]["kernel"] == P("fsdp", None)
    assert specs["layers_0"]["mlp"]["down"]["kernel"] == P(None, "fsdp")
    assert specs["layers_0"]["attn"]["o"]["kernel"] == P(None, None, "fsdp")
    assert specs["final_norm"]["scale"] == P(None)
    assert sharding.batch_sharding((16, 5), mesh).spec == P(("data", "fsdp"), None)
    assert sharding.batch_sharding((2, 5), mesh).spec == P("data", None)  # 4 does not divide what is left
    assert sharding.batch_sharding((3, 5), mesh).spec == P(None, None)
    assert sharding.batch_sharding((), mesh).spec == P()


def test_expert_weights_shard_over_the_expert_axis():
    specs = jax.tree.map(lambda s: s.spec, sharding.param_shardings(MOE, _mesh("fsdp=2,expert=4")))
    moe = specs["layers_0"]["mlp"]
    assert moe["wi_gate"] == P("expert", "fsdp", None) and moe["wo"] == P("expert", None, "fsdp")
    assert moe["router"] == P("fsdp", "expert") and moe["router_bias"] == P("expert")
    # no expert axis in the mesh: experts replicated, their embed dimension FSDP-sharded
    assert sharding.param_shardings(MOE, _mesh("2x4"))["layers_0"]["mlp"]["wi_up"].spec == P(None, "fsdp", None)


def test_params_over_data_split_the_train_state_over_every_axis():
    mesh = _mesh("2x4")
    specs = jax.tree.map(lambda s: s.spec, sharding.param_shardings(ZERO, mesh))
    assert specs["layers_0"]["mlp"]["gate"]["kernel"] == P(("fsdp", "data"), None)
    assert specs["layers_0"]["attn"]["o"]["kernel"] == P(None, None, ("fsdp", "data"))
    assert specs["final_norm"]["scale"] == P(None)
    state = init_train_state(sharding.sharded_init(ZERO, jax.random.key(0), mesh), TX)
    shardings = jax.tree_util.tree_flatten_with_path(sharding.tree_shardings(state, mesh, cfg=ZERO))[0]
    mu = [s.spec for k, s in shardings if jax.tree_util.keystr(k).endswith(".mu['layers_0']['mlp']['gate']['kernel']")]
    assert mu == [P(("fsdp", "data"), None)]  # Adam's moments follow their params over both axes
    # a dimension that 8 does not divide falls back to fsdp alone
    assert sharding.logical_to_spec(("embed", None), mesh, (12, 3), sharding.param_rules(True)) == P("fsdp", None)


def test_rules_drop_absent_axes_and_skip_indivisible_ones():
    mesh = _mesh("2x4")
    assert dict(sharding.logical_rules(mesh))["batch"] == ("data", "fsdp")
    assert "expert" not in dict(sharding.logical_rules(mesh))
    assert sharding.logical_to_spec(("embed", "mlp"), mesh, (6, 8)) == P(None, "fsdp")  # embed 6 falls back
    assert sharding.logical_to_spec(("batch", "length", "embed"), {"fsdp": 4}, (4, 3, 8)) == P("fsdp", None, None)
    assert sharding.logical_rules(_mesh("1")) == ()


def test_optimizer_state_and_caches_follow_the_table():
    mesh = _mesh("2x4")
    params = sharding.sharded_init(DENSE, jax.random.key(0), mesh)
    state = init_train_state(params, TX)
    shardings = sharding.tree_shardings(state, mesh, cfg=DENSE)
    by_path = {jax.tree_util.keystr(k): v.spec for k, v in jax.tree_util.tree_flatten_with_path(shardings)[0]}
    mu = [v for k, v in by_path.items() if k.endswith(".mu['layers_0']['mlp']['gate']['kernel']")]
    assert mu == [P("fsdp", None)]  # Adam's moments follow their params
    assert by_path[".step"] == P() and {v for k, v in by_path.items() if k.endswith(".count")} == {P()}
    placed = sharding.place(state, mesh, DENSE)
    assert placed.params["lm_head"]["kernel"].sharding.spec == P("fsdp", None)
    cache = sharding.cache_shardings(jax.eval_shape(lambda: init_cache(DENSE, 8, 16)), mesh)
    assert cache.layers[0].k_BxKxDxS.spec == P(("data", "fsdp"), None, None, None)
    assert cache.valid_BxS.spec == P(("data", "fsdp"), None) and cache.index.spec == P()


def test_shard_batch_splits_rows_over_the_data_axes():
    mesh = _mesh("2x4")
    x = np.arange(8 * 3).reshape(8, 3)
    out = sharding.shard_batch({"x": x, "n": np.float32(2)}, mesh)
    assert out["x"].sharding.spec == P(("data", "fsdp"), None)
    assert len(out["x"].addressable_shards) == 8 and out["x"].addressable_shards[0].data.shape == (1, 3)
    np.testing.assert_array_equal(np.asarray(out["x"]), x)


@functools.lru_cache(maxsize=None)
def _host_params(name: str):
    return jax.device_get(init_params(CONFIGS[name], jax.random.key(0)))


def test_sharded_init_equals_unsharded_init():
    want = _host_params("moe")
    got = sharding.sharded_init(MOE, jax.random.key(0), _mesh("fsdp=2,expert=4"))
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert len(g.sharding.device_set) == 8
        np.testing.assert_array_equal(np.asarray(g), w)


_double = jax.jit(lambda tree: jax.tree.map(lambda x: 2 * x, tree))  # one compile, sharding kept


class _DoublingPhase:
    """Doubles the params three times, checkpointing each step (a cheap stand-in for a training phase)."""

    name = "double"
    restored_specs: set = set()
    mesh_shape: dict = {}

    def state_template(self, model_cfg):
        from r1jax.phases.runner import abstract_params

        return {"params": abstract_params(model_cfg)}

    def run(self, env, carry, state, cursor):
        if state is not None:  # resumed: the restored state is already on the run's mesh
            _DoublingPhase.restored_specs = {x.sharding.spec for x in jax.tree.leaves(state)}
        _DoublingPhase.mesh_shape = dict(env.mesh.shape)
        params = env.place(_host_params("dense"), carry.model_cfg) if carry.params is None else carry.params
        for step in range(cursor["step"] if cursor else 0, 3):
            params = _double(params)
            env.save(carry.replace(params=params), {"params": params}, {"step": step + 1})
            env.advance()
        return carry.replace(params=params)


def test_runner_restores_a_killed_run_onto_its_mesh(tmp_path):
    from r1jax.phases import Runner, StopRun

    def run(**kw):
        return Runner(str(tmp_path), DENSE, [_DoublingPhase()], mesh="2x4").run(**kw)

    with pytest.raises(StopRun):
        run(stop_at_step=2)
    carry = run()
    assert P("fsdp", None) in _DoublingPhase.restored_specs and _DoublingPhase.mesh_shape == {"data": 2, "fsdp": 4}
    gate = carry.params["layers_0"]["mlp"]["gate"]["kernel"]
    want = sharding.param_shardings(DENSE, gate.sharding.mesh)["layers_0"]["mlp"]["gate"]["kernel"]  # P("fsdp", None)
    assert gate.sharding.is_equivalent_to(want, 2) and want.spec == P("fsdp", None)
    np.testing.assert_allclose(np.asarray(gate), 8 * _host_params("dense")["layers_0"]["mlp"]["gate"]["kernel"])


# ------------------------------------------------------------------------------------------- equivalence
def _grpo_batch(cfg):
    rng = np.random.default_rng(0)
    rows, plen, tlen = 8, 5, 6
    prompt_mask = np.arange(plen)[None] >= rng.integers(0, 3, rows)[:, None]
    comp_mask = np.arange(tlen)[None] < rng.integers(2, tlen + 1, rows)[:, None]
    return GRPOBatch(
        prompt_BxP=np.where(prompt_mask, rng.integers(2, cfg.vocab_size, (rows, plen)), 0).astype(np.int32),
        prompt_mask_BxP=prompt_mask,
        completion_BxT=np.where(comp_mask, rng.integers(2, cfg.vocab_size, (rows, tlen)), 0).astype(np.int32),
        completion_mask_BxT=comp_mask, loss_mask_BxT=comp_mask.astype(np.float32),
        old_logps_BxT=np.full((rows, tlen), -3.0, np.float32), ref_logps_BxT=np.zeros((rows, tlen), np.float32),
        advantages_B=rng.normal(size=rows).astype(np.float32))


def _sft_batch(cfg):
    rng = np.random.default_rng(1)
    examples = [Example(rng.integers(2, cfg.vocab_size, n).astype(np.int32), (np.arange(n) >= 2).astype(np.float32))
                for n in rng.integers(5, 12, 24)]
    return pack(examples, seq_len=16)[0].rows(np.arange(8))


@functools.lru_cache(maxsize=None)
def _outputs(name: str, spec: str) -> dict:
    """Logits and greedy samples, computed once per (model, mesh)."""
    cfg, mesh = CONFIGS[name], _mesh(spec)
    model = Transformer(cfg)
    with sharding.use_mesh(mesh):
        params = sharding.place(_host_params(name), mesh, cfg)  # sharded init itself is tested above
        tokens = np.random.default_rng(2).integers(0, cfg.vocab_size, (8, 7)).astype(np.int32)
        positions = np.broadcast_to(np.arange(7, dtype=np.int32), (8, 7))
        forward = jax.jit(lambda p, t, q: model.apply({"params": p}, t, q)[0])
        logits = np.asarray(forward(params, *sharding.shard_batch((tokens, positions), mesh)))
        sampler = Sampler(cfg, eos_id=1, pad_id=0, prompt_bucket=8)
        prompts = [[3, 4, 5], [6, 7], [8, 9, 10, 11], [12]]
        sample = sampler.sample(params, prompts, jax.random.key(0), group_size=2, max_new_tokens=6, temperature=0.0)
    return {"logits": logits, "greedy": np.asarray(sample.tokens_BxT), "greedy_logps": np.asarray(sample.logps_BxT)}


@functools.lru_cache(maxsize=None)
def _train_step(name: str, spec: str, kind: str) -> dict:
    """One GRPO or SFT step from the same params: scalar metrics, new params, whether the layout was kept."""
    cfg, mesh = CONFIGS[name], _mesh(spec)
    model = Transformer(cfg)
    with sharding.use_mesh(mesh):
        state = sharding.place(init_train_state(_host_params(name), TX), mesh, cfg)
        state_sharding = sharding.tree_shardings(state, mesh, cfg=cfg)
        if kind == "grpo":
            step, batch = make_grpo_step(model, TX, GRPO, None, state_sharding), _grpo_batch(cfg)
        else:
            step, batch = make_sft_step(model, TX, chunk=8, state_sharding=state_sharding), _sft_batch(cfg)
        new, metrics = step(state, sharding.shard_batch(batch, mesh))
        kept = all(n.sharding.is_equivalent_to(s, n.ndim)
                   for n, s in zip(jax.tree.leaves(new), jax.tree.leaves(state_sharding)))
        return {"metrics": {k: float(v) for k, v in jax.device_get(metrics).items() if np.ndim(v) == 0},
                "params": jax.device_get(new.params), "kept_layout": kept}


CASES = [(n, s) for n in ("dense", "moe") for s in MESHES] + [("moe", "fsdp=2,expert=4")]
# 4x2 splits the same axes as 2x4 the other way round: the forward and the sampler check it, the train
# step does not. SFT shares the GRPO step's machinery (state sharding, batch placement): two meshes
# keep the file's time down.
GRPO_CASES = [(n, s) for n, s in CASES if s != "4x2" and n != "zero"] + [("zero", "2x4")]
SFT_CASES = [("dense", "2x4"), ("moe", "fsdp=2,expert=4")]


@pytest.mark.parametrize("name, spec", CASES)
def test_logits_agree_across_meshes(name, spec):
    np.testing.assert_allclose(_outputs(name, spec)["logits"], _outputs(name, "1")["logits"], atol=2e-5)


@pytest.mark.parametrize("name, spec", CASES)
def test_greedy_sampler_tokens_agree_across_meshes(name, spec):
    got, want = _outputs(name, spec), _outputs(name, "1")
    np.testing.assert_array_equal(got["greedy"], want["greedy"])
    np.testing.assert_allclose(got["greedy_logps"], want["greedy_logps"], atol=2e-5)


@pytest.mark.parametrize("name, spec, kind",
                         [(n, s, "grpo") for n, s in GRPO_CASES] + [(n, s, "sft") for n, s in SFT_CASES])
def test_train_step_agrees_across_meshes_and_keeps_its_layout(name, spec, kind):
    got, want = _train_step(name, spec, kind), _train_step("dense" if name == "zero" else name, "1", kind)
    assert got["kept_layout"]
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(got["metrics"][key], want["metrics"][key], rtol=1e-5, err_msg=key)
    for g, w in zip(jax.tree.leaves(got["params"]), jax.tree.leaves(want["params"])):
        np.testing.assert_allclose(g, w, atol=1e-4)  # Adam's first step is ±lr where |grad| ~ 0: noise-sensitive
