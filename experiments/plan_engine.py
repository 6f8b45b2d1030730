"""The engine's decode at a real shape on a fake mesh: JAX_NUM_CPU_DEVICES=64 python experiments/plan_engine.py

Qwen2.5-1.5B, 8x8, 512 slots, prompt 256 + 4,096 new tokens: XLA's per-device bytes of one decode call.
"""
import sys
import time

import jax
import jax.numpy as jnp
sys.path.insert(0, "experiments")
from plan import model_config, mesh_for
from r1jax import sharding
from r1jax.engine import Engine
from r1jax.model import init_params
cfg = model_config("qwen2.5-1.5b", [])
mesh = mesh_for("8x8")
slots, page, new, prompt = 512, 32, 4096, 256
max_pages = -(-(prompt + new) // page)
with sharding.use_mesh(mesh):
    params = sharding.abstract_with_shardings(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0))), mesh, cfg)
    eng = Engine(cfg, pad_id=0, slots=slots, page_size=page)
    pages = 1 + slots * (max_pages + 1) + 8 * max_pages
    # the layout every call starts from: slot arrays over the data axes, the pool as XLA places it
    shardings = eng._init.lower(pages, max_pages, new).compile().output_shardings
    state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                         jax.eval_shape(lambda: eng._init_state(pages, max_pages, new)), shardings)
    t = time.perf_counter()
    m = eng._decode.lower(params, state, jax.ShapeDtypeStruct((slots, max_pages), jnp.int32),
                          jax.ShapeDtypeStruct((), jnp.bool_), stop_ids=(1,)).compile().memory_analysis()
    g = 2 ** 30
    print(f"decode 1.5B 8x8 slots {slots} pages {pages}: args {m.argument_size_in_bytes/g:.2f} GiB temp {m.temp_size_in_bytes/g:.2f} GiB out {m.output_size_in_bytes/g:.2f} compile {time.perf_counter()-t:.1f}s")
    pool = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.cache.layers))
    per_device = sum(x.sharding.shard_shape(x.shape)[0] / x.shape[0] * x.size * x.dtype.itemsize
                     for x in jax.tree.leaves(state.cache.layers))
    print(f"pool bytes: {pool/g:.2f} GiB in all, {per_device/g:.2f} GiB on each device")
