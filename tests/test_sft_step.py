"""The jitted SFT and distillation steps on a tiny model: packing, masks, chunking, accumulation, KD."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from r1jax.config import ModelConfig, OptimizerConfig
from r1jax.data.packing import Example, PackedBatch, batches, pack, pad_rows
from r1jax.model import Transformer, init_params
from r1jax.train.optim import init_train_state, make_optimizer
from r1jax.train.sft_step import (kd_kl, make_distill_step, make_eval_loss, make_sft_step, next_token_targets,
                                  pooled_eval, token_losses)

CFG = ModelConfig.tiny(vocab_size=64)
MODEL = Transformer(CFG)
TEACHER_CFG = ModelConfig.tiny(vocab_size=64, embed_dim=48, num_layers=3, mlp_dim=96)
TEACHER = Transformer(TEACHER_CFG)


@pytest.fixture(scope="module")
def params():
    return _random_params(CFG, seed=0)


def _random_params(cfg, seed, scale=0.1):
    """Random params of cfg's shapes without compiling an initializer (norm scales 1)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0))
    return jax.tree_util.tree_map_with_path(
        lambda path, s: jnp.ones(s.shape, s.dtype) if "norm" in jax.tree_util.keystr(path)
        else jnp.asarray(rng.normal(0, scale, s.shape), s.dtype), shapes)


def _examples(n, seed=0, lo=4, hi=14):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(lo, hi + 1))
        prompt = int(rng.integers(1, length - 1))
        out.append(Example(rng.integers(4, CFG.vocab_size, length).astype(np.int32),
                           (np.arange(length) >= prompt).astype(np.float32)))
    return out


ADAM = make_optimizer(OptimizerConfig(learning_rate=1e-2))
SFT_STEP = make_sft_step(MODEL, ADAM, chunk=16)  # one compile, shared by tests on _overfit_batch()


def _overfit_batch():
    return pack(_examples(8, seed=8), seq_len=48)[0]


@functools.partial(jax.jit, static_argnums=0)
def _padded_logp(model, params, tokens_BxL, mask_BxL):
    positions_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1]), tokens_BxL.shape)
    logits, _ = model.apply({"params": params}, tokens_BxL, positions_BxL, mask_BxL)
    return jax.nn.log_softmax(logits, -1)


def _solo_logps(model, params, examples, width=48):
    """log-softmax of each example's full logits, each row run alone (right-padded, no packing): [L, V] each."""
    tokens = np.zeros((len(examples), width), np.int32)
    for i, e in enumerate(examples):
        tokens[i, :len(e.ids_L)] = e.ids_L
    logp = np.asarray(_padded_logp(model, params, tokens, tokens != 0), np.float64)
    return [logp[i, :len(e.ids_L)] for i, e in enumerate(examples)]


def _hand_ce(params, examples):
    """Masked next-token CE summed over examples from full, unchunked logits; and the token count."""
    total, count = 0.0, 0
    for e, logp in zip(examples, _solo_logps(MODEL, params, examples)):
        w = e.loss_mask_L[1:]
        total -= (logp[np.arange(len(w)), e.ids_L[1:]] * w).sum()
        count += w.sum()
    return total, count


def test_next_token_targets_stay_inside_segments():
    batch = PackedBatch(tokens_BxL=np.array([[5, 6, 7, 8, 9, 0, 0]], np.int32),
                        segment_ids_BxL=np.array([[1, 1, 1, 2, 2, 0, 0]], np.int32),
                        positions_BxL=np.array([[0, 1, 2, 0, 1, 0, 0]], np.int32),
                        loss_mask_BxL=np.array([[0, 0, 1, 1, 1, 0, 1]], np.float32))  # slots 3, 6: a bad packer
    targets, weights = next_token_targets(batch)
    np.testing.assert_array_equal(targets, [[6, 7, 8, 9, 0, 0, 0]])
    np.testing.assert_array_equal(weights, [[0, 1, 0, 1, 0, 0, 0]])  # never across segments, nor in padding


def test_packed_example_logits_equal_its_logits_alone(params):
    examples = _examples(7, seed=1, lo=10, hi=10)  # equal lengths: each runs alone in an unpadded row
    packed, stats = pack(examples, seq_len=32)
    assert stats.rows == 3  # 3 + 3 + 1 segments
    logits, _ = jax.jit(MODEL.apply)({"params": params}, packed.tokens_BxL, packed.positions_BxL,
                                     packed.segment_ids_BxL != 0, segment_ids=packed.segment_ids_BxL)
    logp = np.asarray(jax.nn.log_softmax(logits, -1))
    alone = _solo_logps(MODEL, params, examples, width=10)
    found = 0
    for r, s in zip(*np.nonzero(packed.positions_BxL == 0)):
        seg = packed.segment_ids_BxL[r, s]
        if seg == 0:
            continue
        sel = packed.segment_ids_BxL[r] == seg
        i = next(i for i, e in enumerate(examples) if np.array_equal(e.ids_L, packed.tokens_BxL[r][sel]))
        np.testing.assert_allclose(logp[r][sel], alone[i], atol=1e-5)
        found += 1
    assert found == 7


def test_eval_loss_equals_hand_masked_ce_from_full_logits(params):
    examples = _examples(7, seed=2)
    packed, _ = pack(examples, seq_len=40)
    total, count = _hand_ce(params, examples)
    for chunk in (3, 64):
        out = make_eval_loss(MODEL, chunk)(params, packed)
        assert out["tokens"] == count
        np.testing.assert_allclose(out["loss"], total / count, rtol=1e-5)
        np.testing.assert_allclose(out["loss_sum"], total, rtol=1e-5)


def test_prompt_targets_do_not_enter_the_loss(params):
    rng = np.random.default_rng(3)
    prompt_lens = [3, 5, 8]
    examples = [Example(rng.integers(4, CFG.vocab_size, p + 4).astype(np.int32),
                        (np.arange(p + 4) >= p).astype(np.float32)) for p in prompt_lens]
    packed, _ = pack(examples, seq_len=32)
    completion = every = 0.0
    for p, e, logp in zip(prompt_lens, examples, _solo_logps(MODEL, params, examples)):
        nll = -logp[np.arange(len(e.ids_L) - 1), e.ids_L[1:]]  # slot t-1 predicts token t; completion: t >= p
        completion += nll[p - 1:].sum()
        every += nll.sum()
    out = make_eval_loss(MODEL, chunk=4)(params, packed)
    assert out["tokens"] == 12
    np.testing.assert_allclose(out["loss"], completion / 12, rtol=1e-5)
    assert abs(float(out["loss"]) - every / sum(len(e.ids_L) - 1 for e in examples)) > 1e-3


def test_chunked_gradient_equals_unchunked(params):
    packed, _ = pack(_examples(6, seed=4), seq_len=24)

    def mean_ce(p, chunk):
        ce, _, _, w, _ = token_losses(MODEL, p, packed, chunk)
        return (ce * w).sum() / w.sum()

    def full_logits_ce(p):
        logits, _ = MODEL.apply({"params": p}, packed.tokens_BxL, packed.positions_BxL, packed.segment_ids_BxL != 0,
                                segment_ids=packed.segment_ids_BxL)
        targets, w = next_token_targets(packed)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[..., None], -1)[..., 0]
        return -(logp * w).sum() / w.sum()

    want = jax.jit(jax.grad(full_logits_ce))(params)
    got = jax.jit(jax.grad(mean_ce), static_argnums=1)(params, 7)  # 24 slots: 3 chunks of 7 and a padded one
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_packed_loss_equals_unpacked_loss(params):
    examples = _examples(9, seed=5)
    packed, ps = pack(examples, seq_len=36)
    padded, us = pad_rows(examples, seq_len=36)
    assert ps.rows < us.rows
    eval_loss = make_eval_loss(MODEL, chunk=8)
    a, b = eval_loss(params, packed), eval_loss(params, padded)
    assert a["tokens"] == b["tokens"] == ps.loss_tokens
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["accuracy"], b["accuracy"], rtol=1e-6)
    pooled = pooled_eval(eval_loss, params, (batch for batch, _ in batches(padded, 3, seed=0)))
    assert pooled["tokens"] == ps.loss_tokens
    np.testing.assert_allclose(pooled["loss"], a["loss"], rtol=1e-5)


def test_grad_accumulation_gives_the_same_update(params):
    # rows hold very different token counts, so averaging micro-batch means would differ from the batch mean
    examples = _examples(4, seed=6, lo=4, hi=6) + _examples(4, seed=7, lo=20, hi=24)
    batch, _ = pad_rows(examples, seq_len=24)
    results = []
    tx = optax.sgd(0.1)
    for accum in (1, 4):
        state = init_train_state(jax.tree.map(jnp.array, params), tx)
        state, metrics = make_sft_step(MODEL, tx, chunk=8, grad_accum=accum)(state, batch)
        results.append((state.params, metrics))
    (p1, m1), rest = results[0], results[1:]
    for p, m in rest:
        for k in ("loss", "accuracy", "tokens", "grad_norm"):
            np.testing.assert_allclose(m[k], m1[k], rtol=1e-5)
        for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p1)):
            np.testing.assert_allclose(a, b, atol=1e-6)
    assert not np.allclose(jax.tree.leaves(p1)[0], jax.tree.leaves(params)[0])  # an update happened
    with pytest.raises(ValueError, match="micro-batches"):
        make_sft_step(MODEL, tx, grad_accum=3)(init_train_state(jax.tree.map(jnp.array, params), tx), batch)


def test_sft_overfits_a_tiny_dataset(params):
    batch = _overfit_batch()
    state = init_train_state(jax.tree.map(jnp.array, params), ADAM)
    state, first = SFT_STEP(state, batch)
    for _ in range(29):
        state, metrics = SFT_STEP(state, batch)
    final = make_eval_loss(MODEL, chunk=16)(state.params, batch)
    assert float(final["loss"]) < 0.25 * float(first["loss"])
    assert float(final["accuracy"]) > 0.8 > float(first["accuracy"])
    assert int(state.step) == 30 and int(state.skipped) == 0
    assert float(metrics["input_tokens"]) == (batch.segment_ids_BxL != 0).sum()


def test_non_finite_update_is_skipped(params):
    batch = _overfit_batch()
    bad = jax.tree.map(jnp.array, params)
    bad["embed"]["embedding"] = bad["embed"]["embedding"].at[batch.tokens_BxL[0, 3]].set(jnp.nan)
    state, metrics = SFT_STEP(init_train_state(bad, ADAM), batch)
    assert int(state.skipped) == 1 and int(state.step) == 0 and float(metrics["skipped"]) == 1.0
    np.testing.assert_array_equal(state.params["final_norm"]["scale"], params["final_norm"]["scale"])


def test_kd_kl_by_hand():
    teacher = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    student = np.array([[0.0, 1.0, 0.0], [1.0, -1.0, 3.0]])
    for tau in (1.0, 2.0, 4.0):
        q = np.exp(teacher / tau) / np.exp(teacher / tau).sum(-1, keepdims=True)
        p = np.exp(student / tau) / np.exp(student / tau).sum(-1, keepdims=True)
        np.testing.assert_allclose(kd_kl(jnp.asarray(student), jnp.asarray(teacher), tau),
                                   (q * np.log(q / p)).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(kd_kl(jnp.asarray(teacher), jnp.asarray(teacher), 3.0), [0.0, 0.0], atol=1e-7)


def test_distill_kl_is_zero_when_teacher_is_student(params):
    batch, _ = pack(_examples(4, seed=10), seq_len=32)
    losses = jax.jit(lambda p, t: token_losses(MODEL, p, batch, 8, MODEL, t, temperature=2.0))
    ce, _, kl, w, _ = losses(params, params)
    assert float(jnp.abs(kl * w).max()) < 1e-6 and float(w.sum()) > 0
    _, _, kl, _, _ = losses(params, jax.tree.map(lambda x: x * 1.1, params))
    assert float((kl * w).sum() / w.sum()) > 1e-4
    np.testing.assert_allclose((ce * w).sum() / w.sum(), make_eval_loss(MODEL, 8)(params, batch)["loss"], rtol=1e-5)


def test_distill_loss_from_a_larger_teacher_by_hand(params):
    teacher_params = _random_params(TEACHER_CFG, seed=1)
    examples = _examples(5, seed=11)
    batch, _ = pack(examples, seq_len=30)
    alpha, tau = 0.3, 2.0
    ce_sum = kl_sum = count = 0.0
    student_logps, teacher_logps = _solo_logps(MODEL, params, examples), _solo_logps(TEACHER, teacher_params, examples)
    for e, s_logp, t_logp in zip(examples, student_logps, teacher_logps):
        s_tau = s_logp / tau - np.log(np.exp(s_logp / tau).sum(-1, keepdims=True))  # log_softmax(logits/τ)
        t_tau = t_logp / tau - np.log(np.exp(t_logp / tau).sum(-1, keepdims=True))
        w = e.loss_mask_L[1:]
        ce_sum -= (s_logp[np.arange(len(w)), e.ids_L[1:]] * w).sum()
        kl_sum += ((np.exp(t_tau) * (t_tau - s_tau)).sum(-1)[:-1] * w).sum()
        count += w.sum()
    tx = optax.adam(1e-3)
    state = init_train_state(jax.tree.map(jnp.array, params), tx)  # a copy: the step donates its state
    teacher_copy = jax.tree.map(np.array, teacher_params)
    state, m = make_distill_step(MODEL, TEACHER, tx, alpha=alpha, temperature=tau, chunk=7)(
        state, batch, teacher_params)
    np.testing.assert_allclose(m["kl"], kl_sum / count, rtol=1e-4)
    np.testing.assert_allclose(m["loss"], ((1 - alpha) * ce_sum + alpha * tau ** 2 * kl_sum) / count, rtol=1e-4)
    assert float(m["kl"]) > 1e-3 and int(state.step) == 1
    for a, b in zip(jax.tree.leaves(teacher_params), jax.tree.leaves(teacher_copy)):
        np.testing.assert_array_equal(a, b)  # the teacher is read, never updated nor donated
    with pytest.raises(ValueError, match="vocab"):
        make_distill_step(MODEL, Transformer(ModelConfig.tiny(vocab_size=80)), tx)
