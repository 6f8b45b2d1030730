"""Peak memory of per-token log-probs (forward + backward), chunked versus whole, from XLA's buffer plan.

    python experiments/bench_logprobs_memory.py [--vocab 152064] [--length 4096] [--embed 1536]

Compiles (never runs) the gradient of Σ log π(token) through the LM head for one
sequence, with the head applied to C positions at a time, and reads the
compiled program's temporary-buffer size. Whole = C equal to the length, so
[length, vocab] logits exist at once. Prints a table, writes JSON.
"""
from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp

from r1jax.config import ModelConfig
from r1jax.model import Transformer
from r1jax.train.logprobs import chunked_token_logps


def peak_bytes(cfg: ModelConfig, length: int, chunk: int) -> dict[str, float]:
    model = Transformer(cfg)
    tokens_1x1 = jnp.zeros((1, 1), jnp.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens_1x1, tokens_1x1)["params"])
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          jax.tree.map(lambda b: b.value if hasattr(b, "value") else b, params,
                                       is_leaf=lambda b: hasattr(b, "value")))
    hidden = jax.ShapeDtypeStruct((1, length, cfg.embed_dim), jnp.float32)
    targets = jax.ShapeDtypeStruct((1, length), jnp.int32)

    def loss(p, h, t):
        logp, _ = chunked_token_logps(model, p, h, t, chunk)
        return logp.sum()

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, hidden, targets).compile()
    mem = compiled.memory_analysis()
    return {"chunk": chunk, "temp_GiB": mem.temp_size_in_bytes / 2**30,
            "args_GiB": mem.argument_size_in_bytes / 2**30, "out_GiB": mem.output_size_in_bytes / 2**30}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=152064)
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--embed", type=int, default=1536)
    p.add_argument("--chunks", default="4096,1024,256")
    p.add_argument("--out", default="bench_logprobs_memory.json")
    args = p.parse_args(argv)
    cfg = ModelConfig(vocab_size=args.vocab, embed_dim=args.embed, num_layers=1, num_heads=12, num_kv_heads=2,
                      head_dim=128, mlp_dim=256, tie_embeddings=True, max_len=args.length)
    rows = [peak_bytes(cfg, args.length, int(c)) for c in args.chunks.split(",")]
    logits_gib = args.length * args.vocab * 4 / 2**30
    print(f"vocab {args.vocab}, length {args.length}, embed {args.embed}: one f32 [length, vocab] "
          f"logits tensor is {logits_gib:.2f} GiB")
    print("| chunk | temporary buffers (GiB) | arguments (GiB) |\n|---|---|---|")
    for r in rows:
        print(f"| {r['chunk']} | {r['temp_GiB']:.2f} | {r['args_GiB']:.2f} |")
    with open(args.out, "w") as f:
        json.dump({"vocab": args.vocab, "length": args.length, "embed": args.embed, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
