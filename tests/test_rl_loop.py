"""The host GRPO loop on a toy task: reward rises, dynamic sampling, overlong handling, divergence."""
import random

import jax
import numpy as np
import pytest

from r1jax.config import GRPOConfig, ModelConfig, OptimizerConfig, SamplingSettings
from r1jax.data import Problem, PromptTemplate
from r1jax.model import Transformer, init_params
from r1jax.rewards import RewardPool, WeightedReward
from r1jax.rl.loop import GRPOTrainer, TrainingDiverged, overlong_penalty
from r1jax.tokenizer import Tokenizer

TEMPLATE = PromptTemplate("toy", "Say: {prompt}")
TOKENS = np.array([[3, 4, 5, 6], [7, 8, 9, 10]], np.int32)
POSITIONS = np.broadcast_to(np.arange(4, dtype=np.int32), (2, 4))


def share_of_a(prompts, completions, **_):
    return [c.count("a") / max(len(c), 1) for c in completions]


def flat_for_b(prompts, completions, **_):
    """Rewards that never vary for prompt 'b' (zero advantage), vary elsewhere."""
    return [1.0 if p.endswith("b") else float("a" in c) for p, c in zip(prompts, completions)]


@pytest.fixture(scope="module")
def tok():
    rng = random.Random(0)
    texts = (" ".join("".join(rng.choices("abcdefgh", k=rng.randint(1, 5))) for _ in range(8)) for _ in range(300))
    return Tokenizer.train(texts, vocab_size=300)


def _problems(qs):
    return [Problem(id=f"p{i}-{q}", task="toy", question=q, answer="a") for i, q in enumerate(qs)]


def _trainer(tok, reward=share_of_a, pool=None, max_new_tokens=8, temperature=1.0, **kw):
    cfg = ModelConfig.tiny(vocab_size=tok.vocab_size)
    gcfg = GRPOConfig(**{**dict(group_size=8, prompts_per_step=4, kl_beta=0.0, logprob_chunk=8,
                                sampling=SamplingSettings(max_new_tokens=max_new_tokens, temperature=temperature)),
                         **kw})
    return GRPOTrainer(cfg, init_params(cfg, jax.random.key(0)), tok, gcfg, OptimizerConfig(learning_rate=3e-3),
                       {"a": WeightedReward(reward, 1.0)}, TEMPLATE, pool=pool)


def test_reward_rises_on_toy_task(tok):
    tr = _trainer(tok)
    probs = _problems("abcd")
    rewards = [tr.step(probs, jax.random.fold_in(jax.random.key(1), s))["reward/mean"] for s in range(30)]
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.2, rewards


def test_metrics_have_the_usual_names(tok):
    tr = _trainer(tok, kl_beta=0.01, eps_high=0.28)
    before = jax.tree.map(np.array, tr.state.params)
    m = tr.step(_problems("abcd"), jax.random.key(0))
    after = jax.tree.leaves(jax.tree.map(np.array, tr.state.params))
    assert m["skipped"] == 0 and all(np.isfinite(x).all() for x in after)
    assert any(not np.array_equal(b, a) for b, a in zip(jax.tree.leaves(before), after)), "the update changed nothing"
    for name in ("reward/mean", "reward/std", "reward/a", "completion/length_mean", "completion/length_max",
                 "completion/truncated_frac", "kl", "clip_low_frac", "clip_high_frac", "entropy", "grad_norm",
                 "lr", "throughput/tokens_per_s", "time/step_s", "skipped", "rollout/logp_abs_diff", "rollout/kl_k3"):
        assert name in m and np.isfinite(m[name]), name


def test_dynamic_sampling_drops_flat_groups_and_refills(tok):
    tr = _trainer(tok, reward=flat_for_b, dynamic_sampling=True, max_resample_rounds=2)
    asked = []

    def more(k):
        asked.append(k)
        return _problems("cdef")

    m = tr.step(_problems("abbb"), jax.random.key(0), more_problems=more)
    kept = [p.question for p in tr.last_rollout.problems]
    assert asked == [1] and m["groups/sampled"] == 8
    assert m["groups/informative"] >= 4 and "b" not in kept and len(kept) == 4


def test_gdpo_normalizes_each_weighted_reward_and_the_overlong_penalty(tok):
    from r1jax.rl.grpo import gdpo_advantages
    from r1jax.rl.loop import Rollout

    cfg = ModelConfig.tiny(vocab_size=tok.vocab_size)
    gcfg = GRPOConfig(group_size=4, prompts_per_step=2, kl_beta=0.0, advantage="gdpo", overlong="soft",
                      overlong_buffer=2, sampling=SamplingSettings(max_new_tokens=8))
    rewards = {"a": WeightedReward(share_of_a, 1.0), "b": WeightedReward(flat_for_b, 0.5)}
    tr = GRPOTrainer(cfg, init_params(cfg, jax.random.key(0)), tok, gcfg, OptimizerConfig(), rewards, TEMPLATE)
    rng = np.random.default_rng(0)
    values = {"a": rng.uniform(size=8), "b": rng.integers(0, 2, 8).astype(float)}
    lengths = np.array([3, 8, 7, 5, 8, 2, 6, 7])
    r = Rollout(_problems("ab"), [[1], [1]], np.ones((8, 8), np.int32), np.zeros((8, 8), np.float32), lengths,
                lengths == 8, [""] * 8, values["a"] + 0.5 * values["b"], values, {})
    pen = overlong_penalty(lengths, 8, 2, 1.0)
    want = gdpo_advantages(np.stack([values["a"], values["b"], pen]).reshape(3, 2, 4), np.array([1.0, 0.5, 1.0]))
    np.testing.assert_allclose(np.asarray(tr._batch(r).advantages_B), np.asarray(want).reshape(-1), atol=1e-6)
    np.testing.assert_array_equal(tr._batch(r).sampler_logps_BxT, r.logps_BxT)


def test_overlong_soft_penalty_by_hand():
    pen = overlong_penalty(np.array([10, 16, 18, 20]), max_len=20, buffer=4, penalty=1.0)
    np.testing.assert_allclose(pen, [0.0, 0.0, -0.5, -1.0])
    np.testing.assert_allclose(overlong_penalty(np.array([19, 20]), 20, 0, 1.0), [0.0, -1.0])


def test_overlong_mask_zeroes_truncated_rows(tok):
    tr = _trainer(tok, overlong="mask", max_new_tokens=4)
    r = tr.rollout(_problems("abcd"), jax.random.key(0))
    batch = tr._batch(r)
    mask = np.asarray(batch.loss_mask_BxT)
    assert r.truncated_B.any()
    assert (mask[r.truncated_B] == 0).all()
    assert (mask[~r.truncated_B].sum(1) == r.lengths_B[~r.truncated_B]).all()


def test_reference_refreshes_every_n_steps(tok):
    tr = _trainer(tok, kl_beta=0.1, ref_refresh_every=2)
    first = jax.tree.leaves(tr.ref_params)[0].copy()
    tr.step(_problems("abcd"), jax.random.key(0))
    assert np.array_equal(jax.tree.leaves(tr.ref_params)[0], first)
    tr.step(_problems("abcd"), jax.random.key(1))
    np.testing.assert_array_equal(jax.tree.leaves(tr.ref_params)[0], jax.tree.leaves(tr.state.params)[0])


def test_repeated_non_finite_updates_stop_the_run(tok):
    tr = _trainer(tok, max_bad_steps=2)
    tr.state = tr.state.replace(params=jax.tree.map(lambda x: x * np.nan, tr.state.params))
    tr.step(_problems("abcd"), jax.random.key(0))
    with pytest.raises(TrainingDiverged, match="2 consecutive"):
        tr.step(_problems("abcd"), jax.random.key(1))
    assert int(tr.state.skipped) == 2


def test_rewards_run_in_the_pool_and_failures_are_counted(tok):
    def boom(prompts, completions, **_):
        raise RuntimeError("reward bug")

    with RewardPool(num_workers=2, timeout_s=5.0) as pool:
        tr = _trainer(tok, reward=boom, pool=pool)
        m = tr.step(_problems("abcd"), jax.random.key(0))
    assert m["reward/a_failures"] == 32 and m["reward/mean"] == 0.0


def test_wrong_number_of_problems_is_an_error(tok):
    with pytest.raises(ValueError, match="prompts_per_step=4"):
        _trainer(tok).step(_problems("abc"), jax.random.key(0))


def test_engine_rollout_gives_the_static_samplers_greedy_rows_and_trains(tok):
    static = _trainer(tok, temperature=0.0)
    engine = _trainer(tok, temperature=0.0, rollout="engine", rollout_slots=8, page_size=4)
    probs = _problems("abcd")
    a, b = static.rollout(probs, jax.random.key(0)), engine.rollout(probs, jax.random.key(0))
    assert a.texts == b.texts
    np.testing.assert_array_equal(a.lengths_B, b.lengths_B)
    np.testing.assert_array_equal(a.truncated_B, b.truncated_B)
    np.testing.assert_allclose(a.logps_BxT, b.logps_BxT, atol=2e-5)
    assert np.isfinite(engine.step(probs, jax.random.key(1))["reward/mean"])
    with pytest.raises(ValueError, match="rollout='paged'"):
        GRPOConfig(rollout="paged")


def test_lora_trains_adapters_only_on_a_frozen_base_with_the_base_as_reference(tok):
    from r1jax import lora
    from r1jax.config import LoRAConfig

    cfg = ModelConfig.tiny(vocab_size=tok.vocab_size)
    base = init_params(cfg, jax.random.key(0))
    gcfg = GRPOConfig(group_size=8, prompts_per_step=4, kl_beta=0.01, logprob_chunk=8,
                      sampling=SamplingSettings(max_new_tokens=8, temperature=1.0))
    tr = GRPOTrainer(cfg, base, tok, gcfg, OptimizerConfig(learning_rate=3e-2), {"a": WeightedReward(share_of_a, 1.0)},
                     TEMPLATE, lora=LoRAConfig(rank=4, targets="all-linear"))
    adapters0 = jax.tree.map(np.array, tr.state.params)
    assert all("lora" in jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(adapters0)[0])
    moments = [x for x in jax.tree.leaves(tr.state.opt_state) if np.ndim(x) > 0]
    assert sum(x.size for x in moments) == 2 * lora.count(adapters0)  # Adam's mu and nu: adapters only
    rewards = [tr.step(_problems("abcd"), jax.random.fold_in(jax.random.key(1), s))["reward/mean"] for s in range(12)]
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(tr.frozen), jax.tree.leaves(base)))  # untouched
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(tr.state.params), jax.tree.leaves(adapters0)))
    assert np.mean(rewards[-4:]) > np.mean(rewards[:4]), rewards  # the adapters learn the toy reward
    forward = jax.jit(lambda c, p: Transformer(c).apply({"params": p}, TOKENS, POSITIONS)[0], static_argnums=0)
    np.testing.assert_array_equal(forward(tr.model_cfg, tr.ref_params), forward(cfg, base))  # reference = base
    np.testing.assert_allclose(forward(cfg, tr.final_params()), forward(tr.model_cfg, tr.params), atol=1e-4)
