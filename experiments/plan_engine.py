"""The rollout engine's programs at a real shape on a fake mesh: per-device bytes of decode, prefill and admit.

    python experiments/plan_engine.py                     # Qwen2.5-1.5B, 8x8, 512 slots, 256 + 4,096 tokens
    python experiments/plan_engine.py --shape qwen2.5-7b --new-tokens 8192 --out benchmarks/plan_engine_7b.json
    python experiments/plan_engine.py --model-set paged_attention=tpu_ragged   # the TPU kernel's pool layout

Each program is lowered with abstract inputs (nothing allocated) and compiled under the mesh on
JAX_NUM_CPU_DEVICES fake CPU devices (set from --devices before jax starts); the numbers are XLA's
memory_analysis() per device, and the cross-device ops each runs are counted. The slots split over
the mesh's data-like axes, and so does the page pool: each data shard holds its own run of pages
(r1jax.model.paged), sized as Engine sizes it by default (every slot of the shard at its longest
row, plus its prefill rows' prompts).

With `--model-set paged_attention=tpu_ragged` the pool takes the TPU kernel's layout (keys and values
interleaved) and everything around the kernel is compiled: the interleaved writes, the packing of the
new tokens, the shard_map. A Pallas TPU kernel does not compile for CPU, so a placeholder that returns
zeros of the queries' shape stands in for it: the numbers leave out the kernel's own working memory
(on a TPU, its VMEM blocks).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time

GiB = 2 ** 30


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="qwen2.5-1.5b", help="a preset of experiments/plan.py")
    p.add_argument("--mesh", default="8x8")
    p.add_argument("--devices", type=int, default=64, help="fake CPU devices (JAX_NUM_CPU_DEVICES)")
    p.add_argument("--slots", type=int, default=512)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=4096)
    p.add_argument("--page-size", type=int, default=32)
    p.add_argument("--prefill-rows", type=int, default=8, help="per data shard")
    p.add_argument("--prefill-chunk", type=int, default=256)
    p.add_argument("--model-set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a ModelConfig override, e.g. paged_attention=tpu_ragged (repeatable)")
    p.add_argument("--quick-compile", action="store_true", help="XLA backend optimization level 0 (faster)")
    p.add_argument("--out", default=None, help="write the numbers here as JSON")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    os.environ["JAX_NUM_CPU_DEVICES"] = str(args.devices)
    import jax.numpy as jnp

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from plan import model_config
    from r1jax.model import paged

    cfg = model_config(args.shape, args.model_set)
    real_kernel = paged.tpu_ragged_kernel
    if cfg.paged_attention == "tpu_ragged":  # the Pallas kernel does not lower on CPU: a placeholder of its shape
        paged.tpu_ragged_kernel = lambda: lambda q, *args, **kwargs: jnp.zeros_like(q)
    try:
        return _plan(args, cfg)
    finally:
        paged.tpu_ragged_kernel = real_kernel


COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "reduce-scatter", "collective-permute")


def collectives(hlo: str) -> dict[str, int]:
    """How many of each cross-device op a compiled program runs (its optimized HLO text; the async
    -start/-done pairs count once)."""
    found = {op: len(re.findall(rf"= [^=]*\b{op}(?:-start)?\(", hlo)) for op in COLLECTIVES}
    return {op: n for op, n in found.items() if n}


def _plan(args: argparse.Namespace, cfg) -> dict:
    import jax
    import jax.numpy as jnp

    from plan import mesh_for
    from r1jax import logical, sharding
    from r1jax.engine import Engine
    from r1jax.model import init_params

    mesh = mesh_for(args.mesh)
    slots, page = args.slots, args.page_size
    max_pages = -(-(args.prompt_len + args.new_tokens) // page)
    options = {"xla_backend_optimization_level": 0} if args.quick_compile else None
    sds = jax.ShapeDtypeStruct
    result: dict = {"shape": args.shape, "model_set": args.model_set, "mesh": args.mesh, "slots": slots,
                    "prompt_len": args.prompt_len,
                    "new_tokens": args.new_tokens, "page_size": page, "programs": {}}
    with sharding.use_mesh(mesh):
        params = sharding.abstract_with_shardings(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0))),
                                                  mesh, cfg)
        eng = Engine(cfg, pad_id=0, slots=slots, page_size=page, prefill_rows=args.prefill_rows,
                     prefill_chunk=args.prefill_chunk)
        shards = logical.split_ways("batch", slots)
        per_shard = slots // shards
        pages = 1 + per_shard * (max_pages + 1) + args.prefill_rows * max_pages  # Engine's default, per shard
        shardings = eng._init.lower(pages, max_pages, args.new_tokens, shards).compile().output_shardings
        state = jax.tree.map(lambda s, sh: sds(s.shape, s.dtype, sharding=sh),
                             jax.eval_shape(lambda: eng._init_state(pages, max_pages, args.new_tokens, shards)),
                             shardings)
        pool = jax.tree.leaves(state.cache.layers)
        result.update(shards=shards, pages_per_shard=pages,
                      pool_GiB=sum(x.size * x.dtype.itemsize for x in pool) / GiB,
                      pool_per_device_GiB=sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                                              for x in pool) / GiB)
        i32 = jnp.int32
        rows = shards * args.prefill_rows
        programs = {
            "decode": (eng._decode, (params, state, sds((slots, max_pages), i32), sds((), jnp.bool_)),
                       {"stop_ids": (1,)}),
            "prefill": (eng._prefill, (params, state, sds((rows, max_pages), i32), sds((rows,), i32),
                                       sds((rows, args.prefill_chunk), i32), sds((rows, args.prefill_chunk), bool),
                                       sds((rows,), i32)), {}),
            "admit": (eng._admit, (state, jax.random.key(0)) + tuple(sds((slots,), i32) for _ in range(5))
                      + (sds((slots,), jnp.float32), sds((slots,), jnp.float32), sds((slots,), i32),
                         sds((slots, max_pages), i32)) + tuple(sds((slots,), i32) for _ in range(3)), {}),
        }
        for name, (fn, fn_args, static) in programs.items():
            t = time.perf_counter()
            compiled = fn.lower(*fn_args, **static).compile(options)
            m = compiled.memory_analysis()
            row = {"args_GiB": m.argument_size_in_bytes / GiB, "temp_GiB": m.temp_size_in_bytes / GiB,
                   "out_GiB": m.output_size_in_bytes / GiB, "alias_GiB": m.alias_size_in_bytes / GiB,
                   "compile_s": time.perf_counter() - t, "collectives": collectives(compiled.as_text())}
            row["peak_GiB"] = row["args_GiB"] + row["out_GiB"] + row["temp_GiB"] - row["alias_GiB"]
            result["programs"][name] = row
            print(f"{name:8s} {args.shape} {args.mesh} slots {slots} ({shards} shards): args {row['args_GiB']:.2f} "
                  f"temp {row['temp_GiB']:.2f} out {row['out_GiB']:.2f} alias {row['alias_GiB']:.2f} "
                  f"peak {row['peak_GiB']:.2f} GiB per device, compile {row['compile_s']:.1f} s, collectives "
                  f"{row['collectives'] or 'none'}", flush=True)
    print(f"page pool: {result['pool_GiB']:.2f} GiB in all ({shards} runs of {pages} pages), "
          f"{result['pool_per_device_GiB']:.2f} GiB on each device")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
