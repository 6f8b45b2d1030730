"""MoE in the train steps: balance losses join the loss, the bias moves toward balance, loads are logged."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.config import GRPOConfig, ModelConfig, MoEConfig, OptimizerConfig, SamplingSettings
from r1jax.data.packing import Example, pack
from r1jax.model import Transformer, init_params
from r1jax.rl.grpo_step import GRPOBatch, make_grpo_step
from r1jax.train.optim import init_train_state, make_optimizer
from r1jax.train.sft_step import make_sft_step

MOE = MoEConfig(num_experts=4, top_k=1, expert_dim=8, bias_update_rate=0.01, seq_aux_alpha=1e-2)
CFG = ModelConfig.tiny(vocab_size=32, moe=MOE)


def _bias(params):
    return np.stack([np.asarray(v["mlp"]["router_bias"]) for k, v in sorted(params.items())
                     if isinstance(v, dict) and "mlp" in v and "router_bias" in v["mlp"]])


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(0))


def test_sft_step_updates_bias_against_load(params):
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-3, weight_decay=0.1))
    state = init_train_state(jax.tree.map(jnp.copy, params), tx)
    rng = np.random.default_rng(0)
    examples = [Example(rng.integers(2, 32, 12).astype(np.int32), np.ones(12, np.float32)) for _ in range(8)]
    batch, _ = pack(examples, seq_len=24)
    state, m = make_sft_step(Transformer(CFG), tx, chunk=8)(state, batch)
    assert float(m["moe/aux_loss"]) > 0 and float(m["moe/load_imbalance"]) >= 0
    before, after = _bias(params), _bias(state.params)
    delta = after - before
    # every expert moved by exactly ±γ (or 0 at exactly mean load), and not all the same way
    assert np.all(np.isclose(np.abs(delta), 0.01) | np.isclose(delta, 0.0))
    assert (delta > 0).any() and (delta < 0).any()


def test_grpo_step_logs_moe_metrics_and_moves_bias(params):
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-3))
    state = init_train_state(jax.tree.map(jnp.copy, params), tx)
    gcfg = GRPOConfig(group_size=2, prompts_per_step=2, sampling=SamplingSettings(max_new_tokens=4), logprob_chunk=4,
                      kl_beta=0.0, grad_accum=2)
    step = make_grpo_step(Transformer(CFG), tx, gcfg)
    rng = np.random.default_rng(1)
    batch = GRPOBatch(
        prompt_BxP=jnp.asarray(rng.integers(2, 32, (4, 3)), jnp.int32), prompt_mask_BxP=jnp.ones((4, 3), bool),
        completion_BxT=jnp.asarray(rng.integers(2, 32, (4, 4)), jnp.int32), completion_mask_BxT=jnp.ones((4, 4), bool),
        loss_mask_BxT=jnp.ones((4, 4)), old_logps_BxT=jnp.full((4, 4), -3.0), ref_logps_BxT=jnp.zeros((4, 4)),
        advantages_B=jnp.array([1.0, -1.0, 0.5, -0.5]))
    state, m = step(state, batch)
    assert "moe/load_imbalance" in m and "moe/expert_load" not in m and float(m["moe/aux_loss"]) > 0
    delta = _bias(state.params) - _bias(params)
    assert np.all(np.isclose(np.abs(delta), 0.01) | np.isclose(delta, 0.0)) and np.abs(delta).max() > 0  # once: ±γ
    # an update skipped for a non-finite loss moves nothing, the balancing bias included
    bias = _bias(state.params)  # the step donates its state
    state, m = step(state, batch.replace(advantages_B=batch.advantages_B.at[0].set(jnp.nan)))
    assert float(m["skipped"]) == 1
    np.testing.assert_array_equal(_bias(state.params), bias)


def test_a_skipped_sft_update_leaves_the_bias(params):
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-3))
    state = init_train_state(jax.tree.map(jnp.copy, params), tx)
    rng = np.random.default_rng(0)
    examples = [Example(rng.integers(2, 32, 12).astype(np.int32), np.ones(12, np.float32)) for _ in range(8)]
    batch, _ = pack(examples, seq_len=24)
    mask = batch.loss_mask_BxL.astype(np.float32)
    mask[0, 3] = np.nan  # a non-finite loss: the update is skipped
    batch = batch._replace(loss_mask_BxL=mask)
    new, m = make_sft_step(Transformer(CFG), tx, chunk=8)(state, batch)
    assert float(m["skipped"]) == 1
    np.testing.assert_array_equal(_bias(new.params), _bias(params))
