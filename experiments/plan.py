"""Plan a GRPO step at a real model's shape: AOT-compile its device programs on a fake CPU mesh, no weights.

    python experiments/plan.py --shape qwen2.5-1.5b --mesh 8x8 --new-tokens 4096 --layers 2
    python experiments/plan.py --shape qwen2.5-7b --mesh 8x8 --new-tokens 8192                    # all 28 layers, scanned
    python experiments/plan.py --shape deepseek-v2-lite --mesh fsdp=8,expert=8 --extrapolate
    python experiments/plan.py --shape qwen2.5-0.5b --model-set remat=none --grpo-set logprob_chunk=1024
    python experiments/plan.py --all                   # PLAN_ROWS at full depth → benchmarks/plan.json + a table

Nothing is allocated: params and optimizer state are `jax.eval_shape` trees carrying the shardings of
`r1jax.sharding` (the rule table the training run uses), batches and caches are ShapeDtypeStructs.
Each program is `jax.jit(...).lower(...).compile()` under `use_mesh(mesh)` on JAX_NUM_CPU_DEVICES fake
CPU devices (`--devices`, default 64), and XLA's `memory_analysis()` of the per-device program gives:
  args, out, temp, alias  bytes per device; peak = args + out + temp − alias (donated inputs reused)
  total                   peak + the train state and reference params resident on the device that the
                          program does not take (the optimizer state stays in memory while sampling);
                          the "fits" columns compare `total` with 16 GiB (v5e), 80 GiB (H100), 95 GiB (v5p)
Programs, the ones an RL step runs (r1jax.rl.loop.GRPOTrainer):
  update   make_grpo_step on the whole step batch (μ epochs × minibatches, donated state)
  logps    make_logps_fn on the batch (old and reference log-probs)
  prefill  the Sampler's own jitted `_prefill` (one prefill per prompt, G samples share it)
  decode   the Sampler's own jitted `_decode` (the whole while_loop), fed the layout prefill returns
Models run as the real presets run them: layers scanned (compile time flat in depth), every block
rematerialized, bf16 compute on f32 params; `--model-set scan_layers=false` plans the unrolled
layout, whose compile time grows with depth: then plan a few layers (`--layers`) or fit a line
through two depths (`--extrapolate`, `--fit-layers 2,4`): fixed + per-layer × depth for every
number, printed with the fit. XLA:CPU is not XLA:GPU/TPU (other fusions, no attention kernels): read
the numbers as the program's structure at that shape, not as a promise to the last GiB.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="qwen2.5-1.5b", help="a named model shape (see SHAPES)")
    p.add_argument("--mesh", default="8x8", help="mesh spec as for training (r1jax.sharding): 8x8, fsdp=8,expert=8")
    p.add_argument("--devices", type=int, default=64, help="fake CPU devices (JAX_NUM_CPU_DEVICES, before jax starts)")
    p.add_argument("--new-tokens", type=int, default=4096)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--prompts", type=int, default=32, help="prompts per RL step")
    p.add_argument("--group-size", type=int, default=16, help="G samples per prompt")
    p.add_argument("--minibatches", type=int, default=8, help="updates per step (512 rows / 8 = 64-row minibatches)")
    p.add_argument("--layers", type=int, default=None, help="plan this many layers instead of the real depth")
    p.add_argument("--extrapolate", action="store_true", help="plan at --fit-layers depths, fit, report full depth")
    p.add_argument("--fit-layers", default="2,4", help="the two depths --extrapolate measures")
    p.add_argument("--programs", default="update,logps,prefill,decode")
    p.add_argument("--model-set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a ModelConfig field (any field it has: remat=none, moe.dispatch=ragged_dot)")
    p.add_argument("--grpo-set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a GRPOConfig field (e.g. grad_accum=2, logprob_chunk=1024)")
    p.add_argument("--quick-compile", action="store_true",
                   help="skip LLVM's optimizations (the bytes are XLA's and do not change; compile_s drops)")
    p.add_argument("--all", action="store_true", help="plan every row of PLAN_ROWS (full depth)")
    p.add_argument("--out", default=None, help="write the rows as JSON (--all: benchmarks/plan.json)")
    return p


def set_device_env(argv: list[str]) -> None:
    """Fake CPU devices for the mesh: must be in the environment before jax starts."""
    args, _ = build_parser().parse_known_args(argv)
    os.environ["JAX_NUM_CPU_DEVICES"] = str(args.devices)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


if __name__ == "__main__":
    set_device_env(sys.argv[1:])

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from r1jax import lora as r1lora  # noqa: E402
from r1jax import sharding  # noqa: E402
from r1jax.cli import apply_overrides  # noqa: E402
from r1jax.config import (GRPOConfig, LoRAConfig, MLAConfig, ModelConfig, MoEConfig, OptimizerConfig,  # noqa: E402
                          SamplingSettings)
from r1jax.hf_config import config_from_hf, rope_scaling_from_hf  # noqa: E402
from r1jax.model import Transformer, init_params  # noqa: E402
from r1jax.sampling import Sampler  # noqa: E402
from r1jax.rl.grpo_step import GRPOBatch, make_grpo_step, make_logps_fn  # noqa: E402
from r1jax.train.optim import init_train_state, make_optimizer  # noqa: E402

GIB = 2 ** 30
CHIPS_GIB = {"v5e": 16, "H100": 80, "v5p": 95}
PROGRAMS = ("update", "logps", "prefill", "decode")
METRICS = ("args", "out", "temp", "alias", "code", "peak", "total", "compile_s", "lower_s")
RL_OPTIMIZER = OptimizerConfig(learning_rate=3e-6, warmup_steps=10, weight_decay=0.1)  # the paper's RL settings


def _qwen2(vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, mlp: int, tied: bool, max_pos: int):
    """ModelConfig from the fields of a Qwen2.5 config.json."""
    return lambda: config_from_hf({
        "architectures": ["Qwen2ForCausalLM"], "vocab_size": vocab, "hidden_size": hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "intermediate_size": mlp, "tie_word_embeddings": tied, "max_position_embeddings": max_pos,
        "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu", "use_sliding_window": False})


def deepseek_v2_lite() -> ModelConfig:
    """DeepSeek-V2-Lite's config.json (MLA without a q bottleneck, 64 routed experts top-6, softmax router)."""
    rope = {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
            "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}
    mla = MLAConfig(kv_lora_rank=512, qk_nope_dim=128, qk_rope_dim=64, v_head_dim=128, q_lora_rank=None,
                    mscale_all_dim=0.707)
    moe = MoEConfig(num_experts=64, top_k=6, expert_dim=1408, num_shared_experts=2, router="softmax",
                    norm_topk_prob=False, routed_scaling_factor=1.0, first_k_dense=1, bias_update_rate=0.0,
                    seq_aux_alpha=0.001)
    return ModelConfig(vocab_size=102400, embed_dim=2048, num_layers=27, num_heads=16, num_kv_heads=16,
                       head_dim=64, mlp_dim=10944, rope_theta=10_000.0, rope_scaling=rope_scaling_from_hf(rope, 163840),
                       norm_eps=1e-6, max_len=163840, mla=mla, moe=moe)


SHAPES = {
    "tiny": ModelConfig.tiny,
    "qwen2.5-0.5b": _qwen2(151936, 896, 24, 14, 2, 4864, tied=True, max_pos=32768),
    "qwen2.5-1.5b": _qwen2(151936, 1536, 28, 12, 2, 8960, tied=True, max_pos=131072),
    "qwen2.5-7b": _qwen2(152064, 3584, 28, 28, 4, 18944, tied=False, max_pos=131072),
    "deepseek-v2-lite": deepseek_v2_lite,
}

# --all: (shape, mesh, new tokens, minibatches, ModelConfig overrides), each planned at full depth
PLAN_ROWS = (
    ("qwen2.5-0.5b", "8x8", 4096, 8, ()),
    ("qwen2.5-1.5b", "8x8", 4096, 8, ()),
    ("qwen2.5-1.5b", "8x8", 8192, 8, ()),
    ("qwen2.5-7b", "8x8", 8192, 8, ()),
    ("qwen2.5-7b", "8x8", 8192, 8, ("params_over_data=true",)),  # the 7B preset's layout
    ("qwen2.5-7b", "fsdp=64", 8192, 8, ()),
    ("deepseek-v2-lite", "fsdp=8,expert=8", 4096, 8, ()),
)


# ------------------------------------------------------------------ configs


def model_config(shape: str, overrides: list[str], layers: int | None = None) -> ModelConfig:
    """The named shape as the real presets run it (bf16 compute, f32 params, full remat, scanned layers),
    then `overrides`."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")
    cfg = SHAPES[shape]()
    cfg = dataclasses.replace(cfg, dtype="bfloat16", param_dtype="float32", remat="full", scan_layers=True)
    cfg = apply_overrides(cfg, overrides)
    return cfg if layers is None else dataclasses.replace(cfg, num_layers=layers)


def grpo_config(args: argparse.Namespace, new_tokens: int, minibatches: int) -> GRPOConfig:
    """The paper's GRPO settings (G 16, 32 prompts, KL 0.001, chunk 512) at the plan's sizes, then --grpo-set."""
    cfg = GRPOConfig(group_size=args.group_size, prompts_per_step=args.prompts,
                     sampling=SamplingSettings(max_new_tokens=new_tokens), num_minibatches=minibatches, grad_accum=1,
                     kl_beta=0.001, logprob_chunk=512)
    return apply_overrides(cfg, args.grpo_set)


def mesh_for(spec: str):
    """The mesh, or an error saying how to get the devices it needs."""
    try:
        return sharding.make_mesh(spec)
    except ValueError as e:
        raise ValueError(f"{e}. This process has {jax.device_count()} devices; plan.py sets "
                         f"JAX_NUM_CPU_DEVICES from --devices (default 64) before jax starts") from None


# ------------------------------------------------------- abstract inputs


def _sds(shape: tuple[int, ...], dtype, mesh) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=sharding.batch_sharding(shape, mesh))


def abstract_state(cfg: ModelConfig, tx, mesh):
    """The TrainState as ShapeDtypeStructs with the training run's shardings (Adam moments follow params)."""
    params = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    state = jax.eval_shape(lambda p: init_train_state(p, tx), params)
    return sharding.abstract_with_shardings(state, mesh, cfg)


def abstract_batch(grpo: GRPOConfig, prompt_len: int, mesh) -> GRPOBatch:
    """A GRPOBatch of the step's B = prompts·G rows, rows split over the data-like axes (as shard_batch)."""
    rows, t = grpo.prompts_per_step * grpo.group_size, grpo.sampling.max_new_tokens
    return GRPOBatch(
        prompt_BxP=_sds((rows, prompt_len), jnp.int32, mesh), prompt_mask_BxP=_sds((rows, prompt_len), bool, mesh),
        completion_BxT=_sds((rows, t), jnp.int32, mesh), completion_mask_BxT=_sds((rows, t), bool, mesh),
        loss_mask_BxT=_sds((rows, t), jnp.float32, mesh), old_logps_BxT=_sds((rows, t), jnp.float32, mesh),
        ref_logps_BxT=_sds((rows, t), jnp.float32, mesh), advantages_B=_sds((rows,), jnp.float32, mesh),
        sampler_logps_BxT=_sds((rows, t), jnp.float32, mesh))  # the RL loop always carries the sampler's


def device_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


# ------------------------------------------------------------ programs


def compile_and_measure(jitted, *args, compiler_options=None, **kwargs) -> tuple[dict, object]:
    """Lower + compile: per-device bytes from XLA's memory analysis, seconds of both (compile_s) and of lowering."""
    t0 = time.perf_counter()
    lowered = jitted.lower(*args, **kwargs)
    t1 = time.perf_counter()
    compiled = lowered.compile(compiler_options=compiler_options)
    seconds = time.perf_counter() - t0
    m = compiled.memory_analysis()
    if m is None:
        raise RuntimeError(f"backend {jax.default_backend()!r} gives no memory analysis")
    row = {"args": m.argument_size_in_bytes, "out": m.output_size_in_bytes, "temp": m.temp_size_in_bytes,
           "alias": m.alias_size_in_bytes, "code": m.generated_code_size_in_bytes, "compile_s": seconds,
           "lower_s": t1 - t0}
    row["peak"] = row["args"] + row["out"] + row["temp"] - row["alias"]
    return row, compiled


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """One RL step to plan: its GRPO settings, prompt slots, which programs, how to compile them."""

    grpo: GRPOConfig
    prompt_len: int
    programs: tuple[str, ...] = PROGRAMS
    quick_compile: bool = False

    def __post_init__(self):
        unknown = sorted(set(self.programs) - set(PROGRAMS))
        if unknown:
            raise ValueError(f"unknown program(s) {unknown}; known: {', '.join(PROGRAMS)}")

    @property
    def rows(self) -> int:
        return self.grpo.prompts_per_step * self.grpo.group_size

    def compile(self, jitted, *args, **kwargs) -> tuple[dict, object]:
        options = {"xla_backend_optimization_level": 0} if self.quick_compile else None
        return compile_and_measure(jitted, *args, compiler_options=options, **kwargs)


def plan_programs(cfg: ModelConfig, step: StepPlan, mesh) -> list[dict]:
    """Compile and measure the step's programs; one row (bytes per device) per program."""
    grpo, programs, prompt_len = step.grpo, step.programs, step.prompt_len
    model, tx = Transformer(cfg), make_optimizer(RL_OPTIMIZER)
    rows = []
    with sharding.use_mesh(mesh):
        frozen, frozen_b = None, 0
        if cfg.lora.rank:  # LoRA: the state holds the adapters; the frozen base is a separate argument
            base_cfg = dataclasses.replace(cfg, lora=LoRAConfig())
            frozen = sharding.abstract_with_shardings(
                jax.eval_shape(lambda: init_params(base_cfg, jax.random.key(0))), mesh, base_cfg)
            adapters = r1lora.abstract_adapters(cfg)
            state = sharding.abstract_with_shardings(jax.eval_shape(lambda p: init_train_state(p, tx), adapters),
                                                     mesh, cfg)
            frozen_b = device_bytes(frozen)
            params = r1lora.merge(frozen, state.params)
        else:
            state = abstract_state(cfg, tx, mesh)
            params = state.params
        params_b, state_b = device_bytes(params), device_bytes(state)
        # train state (+ the frozen base) + the reference (a copy of the params; with LoRA only its adapters)
        resident = state_b + frozen_b + (device_bytes(state.params) if grpo.kl_beta else 0)
        batch = abstract_batch(grpo, prompt_len, mesh)

        def add(name, row, args_held):  # args_held: resident bytes the program takes as arguments
            if name in programs:
                rows.append({"program": name, **row, "total": row["peak"] + resident - args_held})

        if "update" in programs:
            update = make_grpo_step(model, tx, grpo, None, sharding.tree_shardings(state, mesh, cfg=cfg))
            add("update", step.compile(update, state, batch, None, frozen)[0], state_b + frozen_b)
        if "logps" in programs:
            logps = make_logps_fn(model, grpo.logprob_chunk, grpo.num_minibatches * grpo.grad_accum)
            add("logps", step.compile(logps, params, batch)[0], params_b)
        if "prefill" in programs or "decode" in programs:  # decode is fed what prefill returns
            sampler = Sampler(cfg, eos_id=1, pad_id=0)
            prompts = grpo.prompts_per_step
            prompt_PxL, mask_PxL = _sds((prompts, prompt_len), jnp.int32, mesh), _sds((prompts, prompt_len), bool, mesh)
            row, prefill = step.compile(sampler._prefill, params, prompt_PxL, mask_PxL,
                                        group_size=grpo.group_size, max_new_tokens=grpo.sampling.max_new_tokens)
            add("prefill", row, params_b)
            if "decode" in programs:
                decode_args = decode_inputs(prefill, step.rows, mesh)
                row = step.compile(sampler._decode, params, *decode_args, top_k=None,
                                   stop_ids=sampler.stop_ids)[0]
                add("decode", {**row, "state_layout": layout(decode_args[0])}, params_b)
    return rows


def decode_inputs(prefill, rows: int, mesh) -> tuple:
    """(state, rng, temperature_B, top_p_B) for `_decode`, the state laid out as prefill returns it."""
    state = jax.tree.map(lambda info, s: jax.ShapeDtypeStruct(info.shape, info.dtype, sharding=s),
                         prefill.out_info, prefill.output_shardings)
    rng = jax.eval_shape(lambda: jax.random.key(0))
    rng = jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=sharding.replicated(mesh))
    per_row = jax.ShapeDtypeStruct((rows,), jnp.float32, sharding=sharding.replicated(mesh))
    return state, rng, per_row, per_row


def layout(tree) -> dict[str, str]:
    """PartitionSpec of each leaf (layer 0 only for per-layer caches): how prefill hands the state to decode."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = jax.tree_util.keystr(path)
        if ".layers[" not in name or ".layers[0]" in name:
            out[name] = str(leaf.sharding.spec)
    return out


# ------------------------------------------------------- plan, fit, report


def plan_one(shape: str, mesh_spec: str, step: StepPlan, overrides: list[str], layers: int | None) -> list[dict]:
    """Rows of one (shape, depth, mesh, step size), each program's numbers with the settings beside them."""
    cfg = model_config(shape, overrides, layers)
    mesh = mesh_for(mesh_spec)
    settings = {"shape": shape, "layers": cfg.num_layers, "full_layers": model_config(shape, overrides).num_layers,
                "mesh": mesh_spec, "devices": mesh.size, "rows": step.rows,
                "minibatch_rows": step.rows // step.grpo.num_minibatches, "prompt_len": step.prompt_len,
                "new_tokens": step.grpo.sampling.max_new_tokens, "extrapolated": False,
                "model": cfg.to_dict()}
    return [{**settings, **row} for row in plan_programs(cfg, step, mesh)]


def extrapolate(low: list[dict], high: list[dict]) -> list[dict]:
    """Per program, the line through two depths: every metric = fixed + per_layer × layers, at full depth."""
    out = []
    for a, b in zip(low, high):
        depth, span = a["full_layers"], b["layers"] - a["layers"]
        fit = {}
        for k in METRICS:
            per_layer = (b[k] - a[k]) / span
            fit[k] = {"fixed": a[k] - per_layer * a["layers"], "per_layer": per_layer}
        full = {k: fit[k]["fixed"] + fit[k]["per_layer"] * depth for k in METRICS}
        out.append({**a, **full, "layers": depth, "model": {**a["model"], "num_layers": depth}, "extrapolated": True,
                    "fit_layers": [a["layers"], b["layers"]], "fit": fit})
    return out


def plan_rows(args: argparse.Namespace, shape: str, mesh_spec: str, grpo: GRPOConfig,
              model_set: tuple[str, ...] = ()) -> list[dict]:
    """Measured rows, plus the extrapolated full-depth rows with --extrapolate; `model_set` before --model-set."""
    programs = tuple(p.strip() for p in args.programs.split(",") if p.strip())
    step = StepPlan(grpo, args.prompt_len, programs, args.quick_compile)
    overrides = list(model_set) + list(args.model_set)
    plan = lambda layers: plan_one(shape, mesh_spec, step, overrides, layers)  # noqa: E731
    if not args.extrapolate:
        return plan(args.layers)
    low, high = (int(n) for n in args.fit_layers.split(","))
    if not 0 < low < high:
        raise ValueError(f"--fit-layers {args.fit_layers!r}: need two depths 0 < low < high")
    moe = model_config(shape, overrides).moe
    if moe is not None and low <= moe.first_k_dense:
        raise ValueError(f"--fit-layers {args.fit_layers!r}: {shape} has {moe.first_k_dense} dense first layer(s); "
                         f"both depths must exceed it so the per-layer slope is an MoE layer")
    measured_low, measured_high = plan(low), plan(high)
    return measured_low + measured_high + extrapolate(measured_low, measured_high)


def _gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def table(rows: list[dict]) -> str:
    """Markdown: one line per program; the fits compare `total` (peak + resident state) with each chip."""
    head = ("| shape | layers | mesh | rows/minibatch | new tokens | program | args GiB | temp GiB | peak GiB "
            "| total GiB | compile s | " + " | ".join(f"{c} {g}" for c, g in CHIPS_GIB.items()) + " |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        layers = (f"{r['layers']} (fit {r['fit_layers'][0]},{r['fit_layers'][1]})" if r["extrapolated"]
                  else f"{r['layers']}/{r['full_layers']}")
        fits = " | ".join("yes" if r["total"] <= g * GIB else "no" for g in CHIPS_GIB.values())
        mesh = r["mesh"] + (" params_over_data" if r.get("model", {}).get("params_over_data") else "")
        rank = (r.get("model", {}).get("lora") or {}).get("rank", 0)
        mesh += f" LoRA r{rank} {r['model']['lora']['targets']}" if rank else ""
        lines.append(f"| {r['shape']} | {layers} | {mesh} | {r['minibatch_rows']} | {r['new_tokens']} "
                     f"| {r['program']} | {_gib(r['args'])} | {_gib(r['temp'])} | {_gib(r['peak'])} "
                     f"| {_gib(r['total'])} | {r['compile_s']:.1f} | {fits} |")
    return "\n".join(lines)


def fit_table(rows: list[dict]) -> str:
    """Markdown: the fitted fixed and per-layer parts of peak, total and compile time."""
    lines = ["| shape | mesh | new tokens | program | peak GiB fixed + per layer | total GiB fixed + per layer "
             "| compile s fixed + per layer |", "|" + " --- |" * 7]
    for r in rows:
        if r["extrapolated"]:
            f = r["fit"]
            lines.append(f"| {r['shape']} | {r['mesh']} | {r['new_tokens']} | {r['program']} "
                         f"| {_gib(f['peak']['fixed'])} + {_gib(f['peak']['per_layer'])} "
                         f"| {_gib(f['total']['fixed'])} + {_gib(f['total']['per_layer'])} "
                         f"| {f['compile_s']['fixed']:.1f} + {f['compile_s']['per_layer']:.1f} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def write_json(path: str, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    meta = {"jax": jax.__version__, "backend": jax.default_backend(), "devices": jax.device_count(),
            "optimizer": dataclasses.asdict(RL_OPTIMIZER), "unit": "bytes per device; compile_s wall seconds"}
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1, default=float)


def main(argv: list[str] | None = None) -> list[dict]:
    """Plan the requested rows, print the tables, write JSON; returns the rows."""
    args = build_parser().parse_args(argv)
    if args.all:  # full depth: with scanned layers compile time does not grow with it
        rows = []
        for shape, mesh_spec, new_tokens, minibatches, model_set in PLAN_ROWS:
            new = plan_rows(args, shape, mesh_spec, grpo_config(args, new_tokens, minibatches), model_set)
            print(table(new) + "\n", flush=True)  # progress, row by row
            rows += new
        out = args.out or "benchmarks/plan.json"
    else:
        rows = plan_rows(args, args.shape, args.mesh, grpo_config(args, args.new_tokens, args.minibatches))
        out = args.out
    print(table(rows))
    fits = fit_table(rows)
    if fits:
        print("\n" + fits)
    if out:
        write_json(out, rows)
        print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:
        sys.exit(f"plan.py: {e}")
