"""Frozen configuration dataclasses; each validates itself in `__post_init__`."""
from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from typing import Any, Literal

import jax.numpy as jnp

# The GRPO objective's modes, named once: r1jax.rl.grpo and r1jax.rl.objectives implement them.
AdvantageMode = Literal["std", "mean", "batch-std", "rloo", "reinforce++", "gdpo"]
Aggregation = Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]
KLEstimator = Literal["k1", "k2", "k3"]
PolicyLoss = Literal["ppo-clip", "gspo", "gspo-token", "cispo", "gmpo", "sapo"]
CovMode = Literal["none", "clip-cov", "kl-cov"]
RolloutIS = Literal["none", "tis-token", "tis-seq", "mis-token", "mis-seq"]
ADVANTAGE_MODES: tuple[str, ...] = typing.get_args(AdvantageMode)
AGGREGATIONS: tuple[str, ...] = typing.get_args(Aggregation)
KL_ESTIMATORS: tuple[str, ...] = typing.get_args(KLEstimator)
POLICY_LOSSES: tuple[str, ...] = typing.get_args(PolicyLoss)
COV_MODES: tuple[str, ...] = typing.get_args(CovMode)
ROLLOUT_IS_MODES: tuple[str, ...] = typing.get_args(RolloutIS)

ROPE_SCALING_KINDS = ("linear", "llama3", "yarn")


def _check(cls_name: str, condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"{cls_name}.{message}")


def _check_positive_ints(cls_name: str, obj: Any, names: tuple[str, ...]) -> None:
    """ValueError naming the first of `names` that is not an int > 0 (a bool is not an int here)."""
    for name in names:
        value = getattr(obj, name)
        _check(cls_name, isinstance(value, int) and not isinstance(value, bool) and value > 0,
               f"{name}={value!r} must be a positive int")


def _dtype_name(value: Any, field: str) -> str:
    """Canonical name ('float32', 'bfloat16', …) of a floating dtype given as a string or jnp dtype."""
    try:
        dtype = jnp.dtype(value)
    except TypeError as e:
        raise ValueError(f"{field}={value!r} is not a dtype") from e
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{field}={value!r} must be a floating dtype")
    return dtype.name


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling for long context: 'linear', 'llama3' (Llama 3.1) or 'yarn' (arXiv 2309.00071).

    `original_max_len` is the context length of pretraining. llama3 reads
    `low_freq_factor`/`high_freq_factor`; yarn reads `beta_fast`, `beta_slow`,
    `truncate` and `attention_factor` (None: 0.1·ln(factor) + 1, the YaRN paper's
    choice), which multiplies cos and sin.
    """

    kind: str
    factor: float
    original_max_len: int = 0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    attention_factor: float | None = None

    def __post_init__(self):
        if self.kind not in ROPE_SCALING_KINDS:
            raise ValueError(f"RopeScaling.kind={self.kind!r} is not one of {ROPE_SCALING_KINDS}")
        if not self.factor > 0:
            raise ValueError(f"RopeScaling.factor={self.factor} must be > 0")
        if self.kind in ("llama3", "yarn") and self.original_max_len <= 0:
            raise ValueError(f"RopeScaling(kind={self.kind!r}) needs original_max_len > 0")
        if self.kind == "llama3" and not self.high_freq_factor > self.low_freq_factor > 0:
            raise ValueError(
                f"llama3 rope scaling needs high_freq_factor > low_freq_factor > 0, "
                f"got {self.high_freq_factor}, {self.low_freq_factor}"
            )
        if self.kind == "yarn" and not self.beta_fast > self.beta_slow > 0:
            raise ValueError(
                f"yarn rope scaling needs beta_fast > beta_slow > 0, got {self.beta_fast}, {self.beta_slow}"
            )
        if self.attention_factor is not None and not self.attention_factor > 0:
            raise ValueError(f"RopeScaling.attention_factor={self.attention_factor} must be > 0")


REMAT_POLICIES = ("none", "full", "dots")
ATTENTION_KERNELS = ("auto", "blockwise", "dense", "cudnn", "splash")
PAGED_KERNELS = ("portable", "tpu_ragged")  # the engine's decode attention (r1jax.model.paged)
# how a model runs, not what it computes: a checkpoint or HF folder loads under any of these
EXECUTION_FIELDS = ("param_dtype", "dtype", "remat", "scan_layers", "attention", "attention_block",
                    "paged_attention", "params_over_data")
ROUTERS = ("sigmoid", "softmax")
MOE_DISPATCH = ("auto", "ragged_dot", "blocked")
MOE_EXPERT_PARALLEL = ("ring", "all_to_all", "none")


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """Mixture-of-experts feed-forward layers: DeepSeekMoE (DeepSeek-V3, arXiv 2412.19437 §2.1.2) or Qwen3-MoE.

    Each MoE layer has `num_experts` routed experts of hidden size `expert_dim`,
    `top_k` of them active per token, plus `num_shared_experts` always-on experts
    (one SwiGLU of hidden size num_shared_experts·expert_dim). `router`:
    'sigmoid' (V3 eq. 13-16: s = σ(u·e), gates from s of the chosen experts) or
    'softmax' (Qwen3-MoE). `norm_topk_prob` renormalizes the chosen gates to sum
    1; `routed_scaling_factor` then multiplies them. Group-limited routing keeps
    the `topk_groups` best of `num_groups` expert groups (a group scores the sum
    of its top-2 biased scores). Layer i is MoE iff i >= first_k_dense, i is not
    in `dense_layers` and (i + 1) % sparse_step == 0 (Qwen3's
    decoder_sparse_step); other layers use the dense Mlp of ModelConfig.mlp_dim.
    Balancing: `bias_update_rate` is γ of auxiliary-loss-free balancing (V3
    §2.1.2, 0 freezes the bias), `seq_aux_alpha` the weight α of the
    sequence-wise balance loss (V3 eq. 17-20), `switch_aux_coef` the weight of
    the Switch-style load-balancing loss (Qwen3-MoE). `dispatch`: 'ragged_dot'
    (jax.lax.ragged_dot, native on GPU/TPU), 'blocked' (block-padded batched
    matmuls, cost ∝ active experts on every backend) or 'auto' (ragged_dot on
    GPU/TPU, blocked elsewhere). `expert_parallel`: how experts are split when a
    mesh is set and the logical 'expert' axis maps to mesh axes of size > 1:
    'ring' (all-gather tokens, local experts, psum_scatter; every backend),
    'all_to_all' (jax.lax.ragged_all_to_all; GPU/TPU only) or 'none' (leave the
    expert layer to the compiler's automatic partitioning).
    """

    num_experts: int
    top_k: int
    expert_dim: int
    num_shared_experts: int = 0
    router: str = "sigmoid"
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    num_groups: int = 1
    topk_groups: int = 1
    first_k_dense: int = 0
    dense_layers: tuple[int, ...] = ()
    sparse_step: int = 1
    bias_update_rate: float = 0.001
    seq_aux_alpha: float = 0.0
    switch_aux_coef: float = 0.0
    dispatch: str = "auto"
    expert_parallel: str = "ring"

    def __post_init__(self):
        c = functools.partial(_check, "MoEConfig")
        _check_positive_ints("MoEConfig", self, ("num_experts", "top_k", "expert_dim", "num_groups", "topk_groups",
                                                 "sparse_step"))
        c(self.top_k <= self.num_experts, f"top_k={self.top_k} must be <= num_experts={self.num_experts}")
        c(self.num_shared_experts >= 0 and self.first_k_dense >= 0,
          "num_shared_experts and first_k_dense must be >= 0")
        c(self.router in ROUTERS, f"router={self.router!r} must be one of {ROUTERS}")
        c(self.dispatch in MOE_DISPATCH, f"dispatch={self.dispatch!r} must be one of {MOE_DISPATCH}")
        c(self.expert_parallel in MOE_EXPERT_PARALLEL,
          f"expert_parallel={self.expert_parallel!r} must be one of {MOE_EXPERT_PARALLEL}")
        c(self.num_experts % self.num_groups == 0,
          f"num_groups={self.num_groups} must divide num_experts={self.num_experts}")
        c(self.topk_groups <= self.num_groups, f"topk_groups={self.topk_groups} must be <= num_groups")
        c(self.top_k <= self.topk_groups * (self.num_experts // self.num_groups),
          f"top_k={self.top_k} must be <= the experts of topk_groups={self.topk_groups} groups")
        c(self.routed_scaling_factor > 0, f"routed_scaling_factor={self.routed_scaling_factor} must be > 0")
        c(self.bias_update_rate >= 0 and self.seq_aux_alpha >= 0 and self.switch_aux_coef >= 0,
          "bias_update_rate, seq_aux_alpha and switch_aux_coef must be >= 0")
        object.__setattr__(self, "dense_layers", tuple(sorted(int(i) for i in self.dense_layers)))


@dataclasses.dataclass(frozen=True)
class MLAConfig:
    """Multi-head latent attention (DeepSeek-V2/V3, arXiv 2412.19437 §2.1.1, eq. 1-11).

    Queries go through a `q_lora_rank` bottleneck (None: one projection); keys
    and values are rebuilt per head from a shared `kv_lora_rank` latent; each
    head's query/key is `qk_nope_dim` position-free dims plus `qk_rope_dim` RoPE
    dims, the RoPE key being one head shared by all heads; values have
    `v_head_dim` dims. The decode cache holds only the latent and the RoPE key.
    With rope scaling, logits are multiplied by (0.1·mscale_all_dim·ln(factor)
    + 1)², YaRN's attention-scale correction as DeepSeek applies it (0: none).
    """

    kv_lora_rank: int
    qk_nope_dim: int
    qk_rope_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None
    mscale_all_dim: float = 0.0

    def __post_init__(self):
        c = functools.partial(_check, "MLAConfig")
        _check_positive_ints("MLAConfig", self, ("kv_lora_rank", "qk_nope_dim", "qk_rope_dim", "v_head_dim"))
        c(self.q_lora_rank is None or self.q_lora_rank > 0, f"q_lora_rank={self.q_lora_rank} must be > 0 or None")
        c(self.qk_rope_dim % 2 == 0, f"qk_rope_dim={self.qk_rope_dim} must be even (RoPE rotates pairs of dims)")
        c(self.mscale_all_dim >= 0, f"mscale_all_dim={self.mscale_all_dim} must be >= 0")


LORA_TARGETS = {  # name → regex over a projection's module path ("layers_3/attn/q", "scan_0_28/mlp/down")
    "all-linear": r"(attn|mlp|shared)/[^/]+$",  # every projection of the blocks, routed experts too; not the LM head
    "attention": r"attn/[^/]+$",
    "mlp": r"mlp/(shared/)?(gate|up|down|wi_gate|wi_up|wo)$",
}


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters (LoRA, arXiv 2106.09685) on the projections `targets` selects; rank 0 is off.

    A projection x·W gains x·A·B·scale with A [in, rank] (PEFT's kaiming-uniform init) and B [rank, out]
    (zeros), so the adapted model equals the base at step 0; scale is alpha / rank, or alpha / √rank
    with `rslora` (arXiv 2312.03732). `targets`: "all-linear", "attention", "mlp" (LORA_TARGETS) or
    a regex searched in each projection's module path ("layers_3/attn/q"); the routed experts of an
    MoE layer are "…/mlp/wi_gate", "…/mlp/wi_up" and "…/mlp/wo", each expert with its own A [in, rank]
    and B [rank, out] (params `wi_gate_lora_a` [X, in, rank], `wi_gate_lora_b` [X, rank, out], …).
    `dropout` is PEFT's lora_dropout: the adapter branch reads dropout(x) in forward passes applied
    with a "dropout" rng (the SFT and GRPO updates pass one), x everywhere else (sampling, log-probs
    of the old and reference policies, evaluation).
    """

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    rslora: bool = False
    targets: str = "all-linear"

    def __post_init__(self):
        c = functools.partial(_check, "LoRAConfig")
        c(isinstance(self.rank, int) and not isinstance(self.rank, bool) and self.rank >= 0,
          f"rank={self.rank!r} must be an int >= 0 (0: no adapters)")
        c(self.alpha > 0, f"alpha={self.alpha} must be > 0")
        number = isinstance(self.dropout, (int, float)) and not isinstance(self.dropout, bool)
        c(number and 0.0 <= self.dropout < 1.0,
          f"dropout={self.dropout!r} must be in [0, 1) (the adapter input's drop rate)")
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"LoRAConfig.targets={self.targets!r} is not a regex ({e})") from None

    @property
    def pattern(self) -> str:
        return LORA_TARGETS.get(self.targets, self.targets)

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank) if self.rank else 0.0

    def adapts(self, module_path: str) -> bool:
        """Whether the projection at `module_path` ("layers_0/attn/q") carries an adapter."""
        return self.rank > 0 and re.search(self.pattern, module_path) is not None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Decoder-only transformer (Qwen2/Qwen2.5, Llama-3 layout): sizes, RoPE, precision.

    `param_dtype` is how params are stored, `dtype` the compute dtype of matmuls
    and activations (softmax, norms and logits are f32 regardless); both accept a
    string or a jnp dtype and are stored as the dtype's name. `max_len` is the
    longest position the checkpoint was built for (HF max_position_embeddings);
    nothing is allocated from it. `remat` is what each block keeps for the backward pass:
    'none' (everything), 'full' (only its input; the block is recomputed) or 'dots' (the matmul
    outputs without batch dims, jax.checkpoint_policies.dots_with_no_batch_dims_saveable); True and
    False read as 'full' and 'none'. `scan_layers` runs each run of identical consecutive blocks as
    one `nn.scan` (params stacked on a leading 'layers' axis), so compile time does not grow with
    depth; `r1jax.model.stack_layers` / `unstack_layers` convert between the layouts. `attention`
    picks the kernel of cache-free calls and prefill: 'auto' (cuDNN on GPU, splash on TPU,
    blockwise elsewhere; on CPU dense for rows of at most one block), 'blockwise' (portable
    online-softmax blocks of `attention_block` slots, memory linear in length), 'dense' (the
    [L, S] scores whole), 'cudnn' or 'splash'. `paged_attention` picks the rollout engine's attention
    over its paged KV cache: 'portable' (a loop over each row's filled pages, any backend) or
    'tpu_ragged' (jax's TPU ragged paged attention kernel over a pool of interleaved keys and
    values; untested on a TPU, grouped-query attention only). `params_over_data` splits params (and with them
    gradients and optimizer state) over the mesh's 'data' axis as well as 'fsdp': ZeRO-3 over the
    whole mesh, so on `--mesh=8x8` a device holds 1/64 of the train state instead of 1/8, at the
    cost of gathering each layer's weights over 'data' too (r1jax.logical.param_rules).
    `lora` adds low-rank adapters to the projections it selects (LoRAConfig; rank 0: none).
    `qk_norm` RMS-normalizes each query and key head before RoPE (Qwen3). `moe`
    makes feed-forward layers mixtures of experts, `mla` makes every attention
    layer multi-head latent attention (which ignores num_kv_heads and head_dim).
    """

    vocab_size: int
    embed_dim: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    qkv_bias: bool = False
    out_bias: bool = False
    tie_embeddings: bool = False
    norm_eps: float = 1e-6
    max_len: int = 4096
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: str = "none"
    qk_norm: bool = False
    moe: MoEConfig | None = None
    mla: MLAConfig | None = None
    scan_layers: bool = False
    attention: str = "auto"
    attention_block: int = 512
    paged_attention: str = "portable"
    params_over_data: bool = False
    lora: LoRAConfig = LoRAConfig()

    def __post_init__(self):
        if isinstance(self.remat, bool) or self.remat in ("true", "false"):
            object.__setattr__(self, "remat", "full" if self.remat in (True, "true") else "none")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"ModelConfig.remat={self.remat!r} must be one of {REMAT_POLICIES} (or a bool)")
        if self.attention not in ATTENTION_KERNELS:
            raise ValueError(f"ModelConfig.attention={self.attention!r} must be one of {ATTENTION_KERNELS}")
        if self.paged_attention not in PAGED_KERNELS:
            raise ValueError(f"ModelConfig.paged_attention={self.paged_attention!r} must be one of {PAGED_KERNELS}")
        if self.paged_attention == "tpu_ragged" and self.mla is not None:
            raise ValueError("ModelConfig.paged_attention='tpu_ragged' reads grouped-query keys and values; "
                             "MLA's latent cache has no such kernel: use 'portable'")
        for name in ("scan_layers", "params_over_data"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r} must be a bool")
        _check_positive_ints("ModelConfig", self, ("vocab_size", "embed_dim", "num_layers", "num_heads",
                                                   "num_kv_heads", "head_dim", "mlp_dim", "max_len", "attention_block"))
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads} "
                "(grouped-query attention shares each kv head among num_heads/num_kv_heads query heads)"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even (RoPE rotates pairs of dims)")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta={self.rope_theta} must be > 0")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ValueError(f"rope_scaling must be a RopeScaling or None, got {self.rope_scaling!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps={self.norm_eps} must be > 0")
        if self.moe is not None and not isinstance(self.moe, MoEConfig):
            raise ValueError(f"moe must be a MoEConfig or None, got {self.moe!r}")
        if self.mla is not None and not isinstance(self.mla, MLAConfig):
            raise ValueError(f"mla must be a MLAConfig or None, got {self.mla!r}")
        if not isinstance(self.lora, LoRAConfig):
            raise ValueError(f"lora must be a LoRAConfig, got {self.lora!r}")
        # Canonical names keep the config hashable, comparable and JSON-friendly.
        object.__setattr__(self, "param_dtype", _dtype_name(self.param_dtype, "param_dtype"))
        object.__setattr__(self, "dtype", _dtype_name(self.dtype, "dtype"))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (sub-configs as dicts); inverse of `from_dict`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Rebuild from `to_dict` output (e.g. a checkpoint's meta)."""
        d = dict(d)
        for name, sub in (("rope_scaling", RopeScaling), ("moe", MoEConfig), ("mla", MLAConfig), ("lora", LoRAConfig)):
            if d.get(name) is not None:
                value = dict(d[name])
                for key, v in value.items():
                    if isinstance(v, list):
                        value[key] = tuple(v)
                d[name] = sub(**value)
        return cls(**d)

    @classmethod
    def tiny(cls, **overrides: Any) -> ModelConfig:
        """A 2-layer GQA model small enough for CPU unit tests (vocab 64, embed 32)."""
        fields = dict(vocab_size=64, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                      mlp_dim=64, max_len=128)
        return cls(**{**fields, **overrides})


@dataclasses.dataclass(frozen=True)
class Execution:
    """How a model loaded from a workdir or Hugging Face folder runs; None keeps the source's setting.

    These change memory, speed and compile time, never the function the model computes (up to
    rounding in a lower `dtype`), so a checkpoint loads under any of them: `--set init.dtype=bfloat16
    --set init.remat=full --set init.scan_layers=true`. Fields as in ModelConfig.
    """

    param_dtype: str | None = None
    dtype: str | None = None
    remat: str | None = None
    scan_layers: bool | None = None
    attention: str | None = None
    attention_block: int | None = None
    paged_attention: str | None = None
    params_over_data: bool | None = None

    def __post_init__(self):
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
        try:
            checked = ModelConfig.tiny(**given)  # the same checks and canonical names as ModelConfig
        except ValueError as e:
            raise ValueError(f"Execution: {e}") from None
        for name in given:
            object.__setattr__(self, name, getattr(checked, name))

    def apply(self, cfg: ModelConfig) -> ModelConfig:
        """`cfg` with every set field replaced."""
        return dataclasses.replace(cfg, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                           if getattr(self, f.name) is not None})


OVERLONG_MODES = ("none", "mask", "soft")
ROLLOUT_SAMPLERS = ("static", "engine")  # r1jax.sampling.Sampler, r1jax.engine.Engine




@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warmup then cosine decay to `end_lr_ratio`·lr, and global-norm clipping.

    `decay_steps` counts optimizer updates after warmup; None keeps the rate constant.
    Paper: lr 3e-6 for RL; SFT 5e-5 → 5e-6 cosine (DeepSeek-R1, arXiv 2501.12948).
    """

    learning_rate: float = 3e-6
    warmup_steps: int = 0
    decay_steps: int | None = None
    end_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    grad_clip: float | None = 1.0

    def __post_init__(self):
        _check("OptimizerConfig", self.learning_rate > 0, f"learning_rate={self.learning_rate} must be > 0")
        _check("OptimizerConfig", self.warmup_steps >= 0, f"warmup_steps={self.warmup_steps} must be >= 0")
        _check("OptimizerConfig", self.decay_steps is None or self.decay_steps > 0,
               f"decay_steps={self.decay_steps} must be > 0 or None")
        _check("OptimizerConfig", 0 <= self.end_lr_ratio <= 1, f"end_lr_ratio={self.end_lr_ratio} must be in [0, 1]")
        _check("OptimizerConfig", self.weight_decay >= 0, f"weight_decay={self.weight_decay} must be >= 0")
        _check("OptimizerConfig", self.grad_clip is None or self.grad_clip > 0,
               f"grad_clip={self.grad_clip} must be > 0 or None")


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How completions are drawn: token budget, temperature (0: greedy), nucleus and top-k filters, stop tokens.

    One of these drives every sampling of a run: the GRPO rollouts (`GRPOConfig.sampling`), the
    evaluations (`EvalPhase.sampling`, `evaluate(settings=...)`, experiments/evaluate.py), rejection
    sampling, and both samplers (r1jax.sampling, r1jax.engine). A row ends at the first of `stop_ids`
    (included in its length); the RL loop, evaluation and the phases add the tokenizer's own stop
    ids (`with_stop_ids`), so a config names only extra ones.
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    stop_ids: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "stop_ids", tuple(int(i) for i in self.stop_ids))
        c = functools.partial(_check, "SamplingSettings")
        c(self.max_new_tokens >= 1, f"max_new_tokens={self.max_new_tokens} must be >= 1")
        c(self.temperature >= 0, f"temperature={self.temperature} must be >= 0 (0: greedy)")
        c(0 < self.top_p <= 1, f"top_p={self.top_p} must be in (0, 1]")
        c(self.top_k >= 0, f"top_k={self.top_k} must be >= 0 (0: off)")
        c(all(i >= 0 for i in self.stop_ids), f"stop_ids={self.stop_ids} must be token ids >= 0")

    @classmethod
    def for_evaluation(cls, max_new_tokens: int, stop_ids: tuple[int, ...] = ()) -> SamplingSettings:
        """The R1 paper's evaluation protocol (§3): temperature 0.6, top-p 0.95, no top-k."""
        return cls(max_new_tokens=max_new_tokens, temperature=0.6, top_p=0.95, stop_ids=stop_ids)

    def paper_evaluation(self) -> SamplingSettings:
        """`for_evaluation` at these settings' token budget and stop ids (evaluations during and after RL)."""
        return SamplingSettings.for_evaluation(self.max_new_tokens, self.stop_ids)

    def with_stop_ids(self, stop_ids) -> SamplingSettings:
        """These settings with `stop_ids` (e.g. a tokenizer's) added to their own, in order, once each."""
        return dataclasses.replace(self, stop_ids=tuple(dict.fromkeys((*map(int, stop_ids), *self.stop_ids))))


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """GRPO: sampling, loss variant and update schedule (DeepSeek-R1 Eq. 1–3; DAPO; Dr. GRPO).

    Each RL step samples `group_size` completions for each of `prompts_per_step`
    prompts with `sampling` (its max_new_tokens, temperature, top-p, top-k, extra stop ids),
    then makes `inner_epochs` × `num_minibatches` optimizer updates
    against the sampling policy's log-probs (paper: 16 minibatches, 1 epoch);
    each minibatch's gradient is accumulated over `grad_accum` micro-batches.
    `ref_refresh_every` replaces the reference policy by the current one every
    N steps (paper: 400; None freezes it). `overlong` = "mask" drops truncated
    completions from the loss, "soft" subtracts a penalty rising linearly from 0
    at max_new_tokens − overlong_buffer to `overlong_penalty` at sampling.max_new_tokens
    (DAPO). `dynamic_sampling` drops groups whose rewards are all equal and
    samples more prompts, at most `max_resample_rounds` times (DAPO). `rollout`
    picks the sampler: "static" (one batch, every row until the longest ends) or
    "engine" (continuous batching over a paged KV cache, `rollout_slots` decode
    slots, 0 = one per row, pages of `page_size` tokens).

    The objective's variants (r1jax.rl.objectives; README "GRPO loss variants"): `policy_loss`
    "ppo-clip" (R1 Eq. 1, with eps_low/eps_high/dual_clip), "gspo" / "gspo-token" (gspo_eps_*; arXiv
    2507.18071), "cispo" (cispo_eps_* bound the IS weight; eps_low 1.0: no lower bound, the MiniMax-M1
    paper's choice; it tunes only the upper bound and does not report it: 5.0 is SkyRL's example),
    "gmpo" (gmpo_eps_* in log space; arXiv 2507.20673), "sapo" (sapo_tau_*; arXiv 2511.20347).
    `advantage` = "gdpo" normalizes each reward within its group before the weighted sum, then by
    the batch std when `gdpo_batch_norm` (arXiv 2601.05242). `entropy_coef` > 0 subtracts that
    multiple of the token entropy. `cov_mode` "clip-cov" / "kl-cov" (arXiv 2505.22617) acts on
    tokens of high log-prob/advantage covariance (clip_cov_* / kl_cov_*). `rollout_is` corrects the
    sampler–trainer mismatch with importance weights (needs recompute_old_logps): "tis-token" /
    "tis-seq" truncate them at `rollout_is_high`, "mis-token" / "mis-seq" drop tokens / sequences
    whose weight is outside [rollout_is_low, rollout_is_high].
    """

    group_size: int = 16
    prompts_per_step: int = 32
    sampling: SamplingSettings = SamplingSettings(max_new_tokens=1024)
    inner_epochs: int = 1
    num_minibatches: int = 1
    grad_accum: int = 1
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float | None = None
    kl_beta: float = 0.001
    kl_estimator: str = "k3"
    advantage: str = "std"
    aggregation: str = "seq-mean-token-mean"
    ref_refresh_every: int | None = 400
    recompute_old_logps: bool = True
    dynamic_sampling: bool = False
    max_resample_rounds: int = 3
    overlong: str = "none"
    overlong_buffer: int = 0
    overlong_penalty: float = 1.0
    logprob_chunk: int = 256
    max_bad_steps: int = 3
    rollout: str = "static"
    rollout_slots: int = 0
    page_size: int = 32
    policy_loss: str = "ppo-clip"
    gspo_eps_low: float = 3e-4
    gspo_eps_high: float = 4e-4
    cispo_eps_low: float = 1.0
    cispo_eps_high: float = 5.0
    gmpo_eps_low: float = 0.4
    gmpo_eps_high: float = 0.4
    sapo_tau_pos: float = 1.0
    sapo_tau_neg: float = 1.05
    gdpo_batch_norm: bool = True
    entropy_coef: float = 0.0
    cov_mode: str = "none"
    clip_cov_fraction: float = 2e-4
    clip_cov_low: float = 1.0
    clip_cov_high: float = 5.0
    kl_cov_fraction: float = 2e-3
    kl_cov_coef: float = 1.0
    rollout_is: str = "none"
    rollout_is_low: float = 0.5
    rollout_is_high: float = 2.0

    def __post_init__(self):
        c = functools.partial(_check, "GRPOConfig")
        c(self.rollout in ROLLOUT_SAMPLERS, f"rollout={self.rollout!r} must be one of {ROLLOUT_SAMPLERS}")
        c(self.rollout_slots >= 0, f"rollout_slots={self.rollout_slots} must be >= 0 (0: one per row)")
        c(self.page_size >= 1, f"page_size={self.page_size} must be >= 1")
        for name in ("group_size", "prompts_per_step", "inner_epochs", "num_minibatches",
                     "grad_accum", "logprob_chunk", "max_bad_steps"):
            c(getattr(self, name) >= 1, f"{name}={getattr(self, name)} must be >= 1")
        rows = self.group_size * self.prompts_per_step
        c(rows % (self.num_minibatches * self.grad_accum) == 0,
          f"num_minibatches·grad_accum={self.num_minibatches * self.grad_accum} must divide "
          f"group_size·prompts_per_step={rows}")
        c(isinstance(self.sampling, SamplingSettings), f"sampling={self.sampling!r} must be a SamplingSettings")
        c(self.eps_low >= 0 and self.eps_high >= 0, f"eps_low={self.eps_low} and eps_high={self.eps_high} must be >= 0")
        c(self.dual_clip is None or self.dual_clip > 1, f"dual_clip={self.dual_clip} must be > 1 or None")
        c(self.kl_beta >= 0, f"kl_beta={self.kl_beta} must be >= 0")
        c(self.kl_estimator in KL_ESTIMATORS, f"kl_estimator={self.kl_estimator!r} must be one of {KL_ESTIMATORS}")
        c(self.advantage in ADVANTAGE_MODES, f"advantage={self.advantage!r} must be one of {ADVANTAGE_MODES}")
        c(self.advantage != "rloo" or self.group_size >= 2,
          f"advantage='rloo' needs group_size >= 2 (leave-one-out), got group_size={self.group_size}")
        c(self.aggregation in AGGREGATIONS, f"aggregation={self.aggregation!r} must be one of {AGGREGATIONS}")
        c(self.ref_refresh_every is None or self.ref_refresh_every >= 1,
          f"ref_refresh_every={self.ref_refresh_every} must be >= 1 or None")
        c(self.overlong in OVERLONG_MODES, f"overlong={self.overlong!r} must be one of {OVERLONG_MODES}")
        c(0 <= self.overlong_buffer < self.sampling.max_new_tokens,
          f"overlong_buffer={self.overlong_buffer} must be in [0, sampling.max_new_tokens)")
        c(self.max_resample_rounds >= 0, f"max_resample_rounds={self.max_resample_rounds} must be >= 0")
        c(self.policy_loss in POLICY_LOSSES, f"policy_loss={self.policy_loss!r} must be one of {POLICY_LOSSES}")
        c(self.dual_clip is None or self.policy_loss == "ppo-clip",
          f"dual_clip applies to policy_loss='ppo-clip' only, got policy_loss={self.policy_loss!r}")
        for name in ("gspo_eps_low", "gspo_eps_high", "cispo_eps_high", "gmpo_eps_low", "gmpo_eps_high"):
            c(getattr(self, name) >= 0, f"{name}={getattr(self, name)} must be >= 0")
        c(0 <= self.cispo_eps_low <= 1, f"cispo_eps_low={self.cispo_eps_low} must be in [0, 1] (1: no lower bound)")
        c(self.sapo_tau_pos > 0 and self.sapo_tau_neg > 0,
          f"sapo_tau_pos={self.sapo_tau_pos} and sapo_tau_neg={self.sapo_tau_neg} must be > 0")
        c(self.entropy_coef >= 0, f"entropy_coef={self.entropy_coef} must be >= 0 (a bonus)")
        c(self.cov_mode in COV_MODES, f"cov_mode={self.cov_mode!r} must be one of {COV_MODES}")
        c(0 < self.clip_cov_fraction <= 1 and 0 < self.kl_cov_fraction <= 1,
          f"clip_cov_fraction={self.clip_cov_fraction} and kl_cov_fraction={self.kl_cov_fraction} must be in (0, 1]")
        c(self.clip_cov_low < self.clip_cov_high,
          f"clip_cov_low={self.clip_cov_low} must be < clip_cov_high={self.clip_cov_high}")
        c(self.kl_cov_coef >= 0, f"kl_cov_coef={self.kl_cov_coef} must be >= 0")
        c(self.rollout_is in ROLLOUT_IS_MODES, f"rollout_is={self.rollout_is!r} must be one of {ROLLOUT_IS_MODES}")
        c(0 <= self.rollout_is_low <= 1 <= self.rollout_is_high,
          f"rollout_is_low={self.rollout_is_low} <= 1 <= rollout_is_high={self.rollout_is_high} must hold")
        c(self.rollout_is == "none" or self.recompute_old_logps,
          f"rollout_is={self.rollout_is!r} needs recompute_old_logps=True (the trainer's own old log-probs)")
