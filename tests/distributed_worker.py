"""One process of test_distributed's two-process run; test_distributed imports `run` for the one-process reference.

    JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=4 R1JAX_COORDINATOR=127.0.0.1:PORT R1JAX_NUM_PROCESSES=2 \
        R1JAX_PROCESS_ID=i python tests/distributed_worker.py OUT_DIR

The processes run one SFT step on an MoE model (`run`), then two GRPO steps on a dense one and a
rollout of the result through the engine (`run_grpo`, with OUT_DIR/tokenizer.model); one launch
for all keeps the test's time down.
"""
import dataclasses
import functools
import json
import os
import sys

import numpy as np

MESH = "data=2,expert=4"
ROWS, SEQ_LEN = 8, 24


def run(mesh_spec: str = MESH) -> dict[str, float]:
    """Forward loss, one SFT step (loss, grad norm, MoE aux loss) and the loss after it, on an MoE model."""
    import jax

    from r1jax import distributed, sharding
    from r1jax.config import ModelConfig, MoEConfig, OptimizerConfig
    from r1jax.data.packing import Example, pack
    from r1jax.model import Transformer, init_params, moe_parallel
    from r1jax.train.optim import init_train_state, make_optimizer
    from r1jax.train.sft_step import make_eval_loss, make_sft_step

    moe = MoEConfig(num_experts=8, top_k=2, expert_dim=16, num_shared_experts=1, seq_aux_alpha=0.01,
                    bias_update_rate=0.01)
    cfg = ModelConfig.tiny(vocab_size=32, moe=moe)
    model, tx = Transformer(cfg), make_optimizer(OptimizerConfig(learning_rate=1e-2))
    rng = np.random.default_rng(0)  # the same params and batch in every process
    shapes = jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0))
    params = jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
    examples = [Example(rng.integers(2, 32, n).astype(np.int32), (np.arange(n) >= 3).astype(np.float32))
                for n in rng.integers(6, 16, 12)]  # 6 rows, padded to 8
    batch, _ = pack(examples, SEQ_LEN)
    batch = batch._replace(**{k: np.pad(v, ((0, ROWS - len(v)), (0, 0))) for k, v in batch._asdict().items()})

    mesh = sharding.make_mesh(mesh_spec)
    with sharding.use_mesh(mesh):
        assert moe_parallel.expert_sharding(moe) is not None  # the MoE layers run expert-parallel
        params = sharding.shard_params(params, mesh, cfg)
        state = jax.jit(lambda p: init_train_state(p, tx))(params)
        rows = distributed.local_rows(ROWS, mesh)  # this process's share, assembled into the global batch
        batch = sharding.shard_batch(batch.rows(np.arange(rows.start, rows.stop)), mesh, process_local=True)
        eval_loss = make_eval_loss(model, chunk=8)
        before = eval_loss(state.params, batch)
        state, metrics = make_sft_step(model, tx, chunk=8)(state, batch)
        after = eval_loss(state.params, batch)
    return {"forward_loss": float(before["loss"]), "step_loss": float(metrics["loss"]),
            "grad_norm": float(metrics["grad_norm"]), "aux_loss": float(metrics["moe/aux_loss"]),
            "loss_after": float(after["loss"])}


GRPO_MESH = "data=2,fsdp=4"


def run_grpo(tokenizer_path: str, mesh_spec: str = GRPO_MESH, steps: int = 2) -> dict[str, float]:
    """Two GRPO steps (rollout with the sampler, rewards, sharded update) on a tiny dense model."""
    import jax

    from r1jax import sharding
    from r1jax.config import GRPOConfig, ModelConfig, OptimizerConfig, SamplingSettings
    from r1jax.data import Problem, PromptTemplate
    from r1jax.model import init_params
    from r1jax.rewards import WeightedReward
    from r1jax.rl.loop import GRPOTrainer
    from r1jax.tokenizer import Tokenizer

    def share_of_a(prompts, completions, **_):
        return [c.count("a") / max(len(c), 1) for c in completions]

    tok = Tokenizer.load(tokenizer_path)
    cfg = ModelConfig.tiny(vocab_size=tok.vocab_size)
    params = jax.tree.map(np.asarray, init_params(cfg, jax.random.key(0)))  # the same host params everywhere
    gcfg = GRPOConfig(group_size=4, prompts_per_step=4, sampling=SamplingSettings(max_new_tokens=8), kl_beta=0.01,
                      logprob_chunk=8, num_minibatches=2)
    mesh = sharding.make_mesh(mesh_spec)
    problems = [Problem(id=f"p{i}", task="toy", question=q, answer="a") for i, q in enumerate("abcd")]
    with sharding.use_mesh(mesh):
        trainer = GRPOTrainer(cfg, params, tok, gcfg, OptimizerConfig(learning_rate=3e-3),
                              {"a": WeightedReward(share_of_a, 1.0)}, PromptTemplate("toy", "Say: {prompt}"),
                              mesh=mesh)
        out = {}
        for step in range(steps):
            m = trainer.step(problems, jax.random.fold_in(jax.random.key(1), step))
            out |= {f"{k}_{step}": m[k] for k in ("reward/mean", "completion/length_mean", "kl", "grad_norm")}
        host = sharding.to_host(trainer.state.params)
        # the trained policy's rollouts through the engine (slots over the data axes, host-side pages)
        paged = GRPOTrainer(cfg, host, tok, dataclasses.replace(gcfg, rollout="engine", rollout_slots=8, page_size=4),
                            OptimizerConfig(learning_rate=3e-3), {"a": WeightedReward(share_of_a, 1.0)},
                            PromptTemplate("toy", "Say: {prompt}"), mesh=mesh)
        r = paged.rollout(problems, jax.random.key(2))
    out["param_abs_sum"] = float(sum(np.abs(x).sum() for x in jax.tree.leaves(host)))
    out |= {"engine_reward_sum": float(r.rewards_B.sum()), "engine_length_sum": float(r.lengths_B.sum()),
            "engine_token_sum": float(np.asarray(r.completion_BxT).sum()),
            "engine_logp_sum": float(np.asarray(r.logps_BxT).sum())}
    return out


def main(out_dir: str) -> None:
    import jax

    from r1jax import distributed

    jax.config.update("jax_numpy_rank_promotion", "raise")
    launch = distributed.initialize(initialization_timeout=120)
    assert launch.kind == "explicit", launch
    assert (jax.process_count(), jax.local_device_count(), jax.device_count()) == (2, 4, 8), (
        jax.process_count(), jax.local_device_count(), jax.device_count())
    result = {**run(), **run_grpo(os.path.join(out_dir, "tokenizer.model")), "main": distributed.is_main_process()}
    with open(os.path.join(out_dir, f"process_{jax.process_index()}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
