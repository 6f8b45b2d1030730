"""Sampler benchmark: prefill and decode tokens/s, against a naive sampler that re-runs the whole sequence.

    python experiments/bench_sampler.py [--sizes S,M] [--out bench_sampler.json]

For each model size and batch it times (best of --repeats, after a compile run):
prefill tokens/s, decode tokens/s of the KV-cache while_loop (no row stops
early: EOS is disabled), the same decode through the naive sampler (a jitted
full forward over the fixed-size [B, prompt + new] buffer at every step), and
G = 8 samples per prompt with prefix sharing (one prefill per prompt) against
prefilling every sample. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.config import ModelConfig
from r1jax.model import Transformer, init_params
from r1jax.sampling import Sampler

SIZES = {
    # name: (ModelConfig fields, [(batch, prompt_len, new_tokens), ...])
    "S": (dict(vocab_size=512, embed_dim=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
               mlp_dim=512, max_len=4096), [(16, 64, 128), (64, 64, 128)]),
    "M": (dict(vocab_size=32000, embed_dim=512, num_layers=8, num_heads=8, num_kv_heads=4, head_dim=64,
               mlp_dim=2048, qkv_bias=True, tie_embeddings=False, max_len=4096), [(16, 64, 128), (64, 64, 128)]),
}


def best_time(fn, repeats: int) -> float:
    fn()  # compile and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def naive_decode_fn(cfg: ModelConfig, prompt_len: int, new_tokens: int, steps: int):
    """Greedy decode that recomputes the full fixed-length sequence at every step (no cache).

    Runs `steps` of the `new_tokens` steps: each costs the same (the buffer has a
    fixed length), so tokens/s over a few steps is the rate of the whole run.
    """
    model = Transformer(cfg)

    @jax.jit
    def run(params, prompt_BxL):
        batch = prompt_BxL.shape[0]
        seq_BxS = jnp.concatenate([prompt_BxL, jnp.zeros((batch, new_tokens), jnp.int32)], axis=1)
        positions_BxS = jnp.broadcast_to(jnp.arange(seq_BxS.shape[1]), seq_BxS.shape)

        def step(t, seq_BxS):
            logits_BxSxV, _ = model.apply({"params": params}, seq_BxS, positions_BxS)
            next_B = jnp.argmax(jax.lax.dynamic_index_in_dim(logits_BxSxV, prompt_len - 1 + t, 1, False), -1)
            return jax.lax.dynamic_update_slice(seq_BxS, next_B[:, None].astype(jnp.int32), (0, prompt_len + t))

        return jax.lax.fori_loop(0, steps, step, seq_BxS)

    return run


def bench_size(name: str, fields: dict, shapes, repeats: int, naive_steps: int) -> list[dict]:
    cfg = ModelConfig(**fields)
    params = init_params(cfg, jax.random.key(0))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    sampler = Sampler(cfg, eos_id=-1, pad_id=0, prompt_bucket=64)
    rows = []
    for batch, prompt_len, new in shapes:
        rng = np.random.default_rng(0)
        prompts = rng.integers(3, cfg.vocab_size, (batch, prompt_len)).tolist()
        prompt = np.asarray(prompts, np.int32)
        mask = np.ones_like(prompt, bool)
        row = dict(size=name, params=int(n_params), batch=batch, prompt_len=prompt_len, new_tokens=new)

        prefill = lambda g=1, p=prompt, m=mask: jax.block_until_ready(  # noqa: E731
            sampler._prefill(params, p, m, group_size=g, max_new_tokens=new))
        t_prefill = best_time(prefill, repeats)
        row["prefill_tok_s"] = batch * prompt_len / t_prefill

        temps, top_p = jnp.zeros((batch,)), jnp.ones((batch,))
        decode = lambda: jax.block_until_ready(  # noqa: E731
            sampler._decode(params, prefill(), jax.random.key(1), temps, top_p, top_k=None,
                            stop_ids=sampler.stop_ids))
        t_total = best_time(decode, repeats)
        row["decode_tok_s"] = batch * new / max(t_total - t_prefill, 1e-9)
        row["generate_tok_s"] = batch * new / t_total  # prefill + decode, as a user sees it
        t_hot = best_time(lambda: jax.block_until_ready(sampler.sample(
            params, prompts, jax.random.key(2), max_new_tokens=new, temperature=1.0).tokens_BxT), repeats)
        row["generate_t1_tok_s"] = batch * new / t_hot

        steps = min(new, naive_steps)
        naive = naive_decode_fn(cfg, prompt_len, new, steps)
        t_naive = best_time(lambda: jax.block_until_ready(naive(params, prompt)), max(1, repeats // 2))
        row["naive_generate_tok_s"] = batch * steps / t_naive
        row["naive_steps_timed"] = steps
        row["speedup_vs_naive"] = row["generate_tok_s"] / row["naive_generate_tok_s"]

        group = 8
        if batch % group == 0:
            shared = lambda: jax.block_until_ready(sampler._prefill(  # noqa: E731
                params, prompt[: batch // group], mask[: batch // group], group_size=group, max_new_tokens=new))
            row["prefill_G8_shared_s"] = best_time(shared, repeats)
            row["prefill_G8_unshared_s"] = t_prefill
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="S,M")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--naive-steps", type=int, default=16, help="decode steps timed for the naive sampler")
    p.add_argument("--out", default="bench_sampler.json")
    args = p.parse_args(argv)
    unknown = set(args.sizes.split(",")) - set(SIZES)
    if unknown:
        p.error(f"unknown sizes {sorted(unknown)}; choose from {sorted(SIZES)}")
    rows = []
    for name in args.sizes.split(","):
        rows += bench_size(name, *SIZES[name], repeats=args.repeats, naive_steps=args.naive_steps)
    header = ("size", "params", "batch", "prefill tok/s", "decode tok/s", "generate tok/s (T=0)",
              "generate tok/s (T=1)", "naive tok/s", "speed-up", "G=8 prefill shared/unshared s")
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        g8 = (f"{r['prefill_G8_shared_s']:.3f} / {r['prefill_G8_unshared_s']:.3f}"
              if "prefill_G8_shared_s" in r else "-")
        print(f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['batch']} | {r['prefill_tok_s']:,.0f} | "
              f"{r['decode_tok_s']:,.0f} | {r['generate_tok_s']:,.0f} | {r['generate_t1_tok_s']:,.0f} | "
              f"{r['naive_generate_tok_s']:,.0f} | {r['speedup_vs_naive']:.1f}x | {g8} |")
    meta = dict(jax=jax.__version__, backend=jax.default_backend(), devices=jax.device_count(),
                machine=platform.machine(), processor=platform.processor())
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
