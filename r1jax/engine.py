"""Rollouts by continuous batching over a paged KV cache: the cost follows the tokens actually generated.

    engine = Engine(model_cfg, pad_id=tok.pad_id, slots=64)
    settings = SamplingSettings(max_new_tokens=256, temperature=1.0, stop_ids=(tok.eos_id,))
    out = engine.generate(params, prompts, rng, group_size=8, settings=settings)
    out.tokens_BxT, out.logps_BxT, out.lengths_B, out.truncated_B      # as r1jax.sampling.Sampler.sample

A fixed number of decode slots run one row each: a (prompt, sample) request. A call goes

  1. admit: every free slot takes the next waiting request. A prompt is prefilled once, in chunks
     of `prefill_chunk` tokens, into pages of the pool; its G samples share its full pages read-only
     and each gets a copy of the last, partly filled one (their own tokens go there next).
  2. decode: every live slot generates up to `decode_steps` tokens in one device loop, which returns
     early, while requests wait, once `refill_at` rows have ended (their slots are refilled together).
  3. retire: an ended row (one of the stop tokens, or its own token budget) gives its output to the
     caller and its pages back to the pool; its slot is free for step 1.

so no slot waits for the longest row of a batch, and decode attention reads only the pages a row
has filled (r1jax.model.paged). A row's tokens depend on (rng, its prompt's tokens, its sample
index) and the params only: its random keys are folded from those, never from the slot, the slot
count or what else is in flight. Log-probs are under the raw model, as the static sampler's.

The host side owns the pages: a free list and a reference count per page (a prompt's pages are
held by the prompt until its last sample is admitted, and by each sample). A row is admitted with
every page its budget can need, so a running row never waits for pages.
"""
from __future__ import annotations

import collections
import dataclasses
import zlib
from collections.abc import Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from r1jax.config import ModelConfig, SamplingSettings
from r1jax import logical
from r1jax.model import PagedCache, Transformer, init_paged_cache, map_pages
from r1jax.model.layers import constrain
from r1jax.model.paged import copy_pages, shard_pages
from r1jax.sampling import SampleOutput, _per_row, check_request
from r1jax.sharding import to_host
from r1jax.sampling_ops import choose_tokens


_SLOT_FIELDS = ("logits_SxV", "keys_S", "count_S", "budget_S", "live_S", "stopped_S", "temperature_S", "top_p_S",
                "top_k_S", "tokens_SxT", "logps_SxT")


def slots_over_data(state: EngineState) -> EngineState:
    """Every per-slot array (and the page tables) split over the current mesh's data-like axes, as
    batch rows are, and the page pool's runs with them (each shard's slots use its own run of pages,
    r1jax.model.paged); a no-op without a mesh."""
    def by_slot(x):
        return constrain(x, "batch", *(None,) * (x.ndim - 1))

    shards = state.cache.shards
    cache = map_pages(state.cache, lambda pool, axis: shard_pages(pool, shards, axis))
    cache = cache.replace(pages_BxM=by_slot(cache.pages_BxM), lengths_B=by_slot(cache.lengths_B))
    return state.replace(cache=cache, **{name: by_slot(getattr(state, name)) for name in _SLOT_FIELDS})


@flax.struct.dataclass
class EngineState:
    """The device side, per decode slot (S slots, T = max_new_tokens, V vocab)."""

    cache: PagedCache  # the page pool; its pages_BxM / lengths_B are the slots' (prompt + generated tokens)
    logits_SxV: jax.Array  # f32: the model's prediction for each slot's next token
    prompt_logits_QxV: jax.Array  # f32: next-token logits of the prefilled prompts not fully admitted (Q = S + 1)
    keys_S: jax.Array  # typed PRNG keys: the slot's row's own (from rng, prompt, sample index)
    count_S: jax.Array  # int32: tokens the slot's row has generated
    budget_S: jax.Array  # int32: the row's token budget
    live_S: jax.Array  # bool: the slot holds a row that has not ended
    stopped_S: jax.Array  # bool: the row ended with a stop token (not its budget)
    temperature_S: jax.Array  # f32
    top_p_S: jax.Array  # f32
    top_k_S: jax.Array  # int32, 0: off
    tokens_SxT: jax.Array  # int32: the row's tokens so far, pad after
    logps_SxT: jax.Array  # f32: their raw-model log-probs, 0 after


def prompt_digest(prompt: Sequence[int]) -> int:
    """A prompt's tokens as one int31 (CRC-32): what its samples' keys are folded from."""
    return zlib.crc32(np.asarray(prompt, np.int32).tobytes()) & 0x7FFFFFFF


def prompt_key(rng: jax.Array, digest: jax.Array | int, sample: jax.Array | int) -> jax.Array:
    """A (prompt, sample index) request's own key: the same whatever else is in flight."""
    return jax.random.fold_in(jax.random.fold_in(rng, digest), sample)


@dataclasses.dataclass
class _Prompt:
    """A prefilled prompt: its pages (held until its last sample is admitted) and next-token logits."""

    length: int
    shard: int  # whose pool holds its pages (every sample of a prompt runs in that shard's slots)
    pages: list[int]
    row: int  # its row of EngineState.prompt_logits_QxV
    waiting: int  # samples not admitted yet


class PagePool:
    """Host-side page accounting: a free list and a reference count per page; page 0 is the null page."""

    def __init__(self, num_pages: int):
        self.refs = np.zeros((num_pages,), np.int32)
        self.free = collections.deque(range(1, num_pages))
        self.peak = 0  # most pages held at once

    def take(self, n: int) -> list[int]:
        if n > len(self.free):
            raise RuntimeError(f"page pool exhausted: {n} pages asked, {len(self.free)} free")
        pages = [self.free.popleft() for _ in range(n)]
        self.refs[pages] = 1
        self.peak = max(self.peak, len(self.refs) - 1 - len(self.free))
        return pages

    def share(self, pages: Sequence[int]) -> None:
        for p in pages:
            self.refs[p] += 1

    def release(self, pages: Sequence[int]) -> None:
        for p in pages:
            if self.refs[p] < 1:
                raise RuntimeError(f"page {p} released more often than taken")
            self.refs[p] -= 1
            if self.refs[p] == 0:
                self.free.append(p)

    @property
    def in_use(self) -> int:
        return int((self.refs > 0).sum())


class Engine:
    """Continuous-batching sampler over a paged KV cache for a `Transformer` (dense, MoE, MLA).

    Under a mesh the slots split over the data-like axes into shards (as batch rows do), and each
    shard has its own run of `num_pages` pages: a prompt is assigned to one shard when its first
    sample is admitted, and all its samples run there. Without a mesh there is one shard.
    """

    def __init__(self, cfg: ModelConfig, *, pad_id: int, slots: int = 64, page_size: int = 32,
                 num_pages: int | None = None, prefill_chunk: int = 128, prefill_rows: int = 8,
                 decode_steps: int = 64, refill_at: int | None = None, cache_dtype: Any = None):
        """`refill_at`: ended rows that bring a decode loop back to admit waiting ones (default slots // 8, ≥ 1).
        `num_pages` and `prefill_rows` are per shard (default: enough pages for every slot's longest row)."""
        refill_at = max(1, slots // 8) if refill_at is None else refill_at
        for name, value in (("slots", slots), ("page_size", page_size), ("prefill_chunk", prefill_chunk),
                            ("prefill_rows", prefill_rows), ("decode_steps", decode_steps), ("refill_at", refill_at)):
            if value < 1:
                raise ValueError(f"Engine {name}={value} must be >= 1")
        if num_pages is not None and num_pages < 2:
            raise ValueError(f"Engine num_pages={num_pages} must be >= 2 (page 0 is the null page)")
        self.cfg, self.pad_id, self.slots, self.page_size = cfg, int(pad_id), slots, page_size
        self.num_pages, self.prefill_chunk, self.prefill_rows = num_pages, prefill_chunk, prefill_rows
        self.decode_steps, self.refill_at, self.cache_dtype = decode_steps, min(refill_at, slots), cache_dtype
        self.model = Transformer(cfg)
        self.pools: list[PagePool] = []  # the last call's accounting, one per shard (tests read it)
        self._init = jax.jit(lambda *shape: slots_over_data(self._init_state(*shape)), static_argnums=(0, 1, 2, 3))
        self._prefill = jax.jit(self._prefill_impl, donate_argnames=("state",))
        self._admit = jax.jit(self._admit_impl, donate_argnames=("state",))
        self._decode = jax.jit(self._decode_impl, static_argnames=("stop_ids",), donate_argnames=("state",))

    # ------------------------------------------------------------- device side
    @property
    def pool(self) -> PagePool:
        """The last call's page accounting, when it ran in one shard."""
        if len(self.pools) != 1:
            raise ValueError(f"the last call ran in {len(self.pools)} shards: read Engine.pools")
        return self.pools[0]

    def _init_state(self, num_pages: int, max_pages: int, max_new_tokens: int, shards: int = 1) -> EngineState:
        s, v = self.slots, self.cfg.vocab_size
        return EngineState(
            cache=init_paged_cache(self.cfg, num_pages, self.page_size, s, max_pages, self.cache_dtype, shards),
            logits_SxV=jnp.zeros((s, v), jnp.float32), prompt_logits_QxV=jnp.zeros((s + 1, v), jnp.float32),
            keys_S=jax.random.split(jax.random.key(0), s),
            count_S=jnp.zeros((s,), jnp.int32), budget_S=jnp.zeros((s,), jnp.int32),
            live_S=jnp.zeros((s,), bool), stopped_S=jnp.zeros((s,), bool),
            temperature_S=jnp.zeros((s,), jnp.float32), top_p_S=jnp.ones((s,), jnp.float32),
            top_k_S=jnp.zeros((s,), jnp.int32), tokens_SxT=jnp.full((s, max_new_tokens), self.pad_id, jnp.int32),
            logps_SxT=jnp.zeros((s, max_new_tokens), jnp.float32))

    def _prefill_impl(self, params, state: EngineState, pages_RxM, lengths_R, tokens_RxC, mask_RxC, table_R):
        """One chunk of R prompts into their pages; a prompt ending in it (table_R: its logits row, else Q,
        dropped) gets the logits at its last token."""
        rows = state.cache.replace(pages_BxM=pages_RxM, lengths_B=lengths_R)
        hidden_RxCxE, rows = self.model.apply({"params": params}, tokens_RxC, tokens_RxC, mask_RxC, rows,
                                              method="hidden")
        last_R = jnp.maximum(jnp.sum(mask_RxC, axis=1, dtype=jnp.int32) - 1, 0)
        hidden_Rx1xE = jnp.take_along_axis(hidden_RxCxE, last_R[:, None, None], axis=1)
        logits_RxV = self.model.apply({"params": params}, hidden_Rx1xE, method="logits")[:, 0]
        return slots_over_data(state.replace(
            cache=state.cache.replace(layers=rows.layers),
            prompt_logits_QxV=state.prompt_logits_QxV.at[table_R].set(logits_RxV, mode="drop")))

    def _admit_impl(self, state: EngineState, rng, slot_A, prompt_A, digest_A, sample_A, budget_A, temperature_A,
                    top_p_A, top_k_A, pages_AxM, lengths_A, copy_from_A, copy_to_A) -> EngineState:
        """Rows into slots `slot_A` (index S: padding, dropped), after copying pages copy_from_A → copy_to_A.

        Row a is sample `sample_A[a]` of the prompt in logits row `prompt_A[a]` whose digest is `digest_A[a]`.
        A = S entries split over the shards as slots are: entry a copies pages within shard a // (S/shards).
        """
        logits_AxV = jnp.take(state.prompt_logits_QxV, prompt_A, axis=0)
        keys_A = jax.vmap(prompt_key, in_axes=(None, 0, 0))(rng, digest_A, sample_A)
        shards = state.cache.shards

        def put(x, v):
            return x.at[slot_A].set(v, mode="drop")

        cache = map_pages(state.cache, lambda pool, axis: copy_pages(pool, copy_from_A, copy_to_A, shards, axis))
        cache = cache.replace(pages_BxM=put(cache.pages_BxM, pages_AxM), lengths_B=put(cache.lengths_B, lengths_A))
        a = slot_A.shape[0]
        return slots_over_data(state.replace(
            cache=cache, logits_SxV=put(state.logits_SxV, logits_AxV), keys_S=put(state.keys_S, keys_A),
            count_S=put(state.count_S, jnp.zeros((a,), jnp.int32)), budget_S=put(state.budget_S, budget_A),
            live_S=put(state.live_S, budget_A > 0), stopped_S=put(state.stopped_S, jnp.zeros((a,), bool)),
            temperature_S=put(state.temperature_S, temperature_A), top_p_S=put(state.top_p_S, top_p_A),
            top_k_S=put(state.top_k_S, top_k_A),
            tokens_SxT=put(state.tokens_SxT, jnp.full((a, state.tokens_SxT.shape[1]), self.pad_id, jnp.int32)),
            logps_SxT=put(state.logps_SxT, jnp.zeros((a, state.logps_SxT.shape[1]), jnp.float32))))

    def _advance(self, params, state: EngineState, stop_ids: tuple[int, ...]) -> EngineState:
        """Each live slot chooses its next token with its own key, records it, and runs the model on it."""
        keys_S = jax.vmap(jax.random.fold_in)(state.keys_S, state.count_S)
        token_S, logp_S = choose_tokens(state.logits_SxV, keys_S, state.temperature_S, state.top_p_S, state.top_k_S)
        live_S = state.live_S
        token_S = jnp.where(live_S, token_S, self.pad_id)
        rows_S = jnp.arange(self.slots)
        column_S = jnp.where(live_S, state.count_S, state.tokens_SxT.shape[1])  # idle slots: out of range, dropped
        tokens_SxT = state.tokens_SxT.at[rows_S, column_S].set(token_S, mode="drop")
        logps_SxT = state.logps_SxT.at[rows_S, column_S].set(logp_S, mode="drop")
        hidden_Sx1xE, cache = self.model.apply({"params": params}, token_S[:, None], token_S[:, None],
                                               live_S[:, None], state.cache, method="hidden")
        logits_SxV = self.model.apply({"params": params}, hidden_Sx1xE, method="logits")[:, 0]
        count_S = state.count_S + live_S.astype(jnp.int32)
        stop_S = jnp.isin(token_S, jnp.asarray(stop_ids, jnp.int32)) if stop_ids else jnp.zeros_like(live_S)
        ended_S = live_S & (stop_S | (count_S >= state.budget_S))
        return slots_over_data(state.replace(
            cache=cache, logits_SxV=logits_SxV, count_S=count_S, live_S=live_S & ~ended_S,
            stopped_S=state.stopped_S | (live_S & stop_S), tokens_SxT=tokens_SxT, logps_SxT=logps_SxT))

    def _decode_impl(self, params, state: EngineState, pages_SxM, return_on_end, *,
                     stop_ids: tuple[int, ...]) -> EngineState:
        """Up to `decode_steps` steps of every live slot; back early once `refill_at` rows ended if `return_on_end`."""
        state = state.replace(cache=state.cache.replace(pages_BxM=pages_SxM))
        live_at_start = state.live_S
        refill_at = jnp.minimum(self.refill_at, jnp.sum(live_at_start))

        def keep_going(carry):
            i, s = carry
            ended = jnp.sum(live_at_start & ~s.live_S) >= refill_at
            return (i < self.decode_steps) & jnp.any(s.live_S) & ~(return_on_end & ended)

        _, state = jax.lax.while_loop(keep_going, lambda c: (c[0] + 1, self._advance(params, c[1], stop_ids)),
                                      (jnp.int32(0), state))
        return state

    # --------------------------------------------------------------- host side
    def generate(self, params, prompts: Sequence[Sequence[int]], rng: jax.Array, *, group_size: int = 1,
                 settings: SamplingSettings, temperature=None, top_p=None, top_k=None,
                 budgets=None) -> SampleOutput:
        """G completions of each prompt (rows prompt-major: row b·G + j is sample j of prompt b).

        `temperature`, `top_p`, `top_k` and `budgets` (each row's own max new tokens, at most
        settings.max_new_tokens) override the settings per prompt or per row.
        """
        if group_size < 1:
            raise ValueError(f"group_size={group_size} must be >= 1")
        prompts = check_request(prompts, self.cfg.vocab_size, settings.stop_ids)
        n, g, t_max, size = len(prompts), group_size, settings.max_new_tokens, self.page_size
        temperature_B = _per_row(settings.temperature if temperature is None else temperature, n, g, "temperature")
        top_p_B = _per_row(settings.top_p if top_p is None else top_p, n, g, "top_p")
        top_k_B = _per_row(settings.top_k if top_k is None else top_k, n, g, "top_k").astype(np.int32)
        budget_B = _per_row(t_max if budgets is None else budgets, n, g, "budgets").astype(np.int32)
        if (temperature_B < 0).any() or ((top_p_B <= 0) | (top_p_B > 1)).any() or (top_k_B < 0).any():
            raise ValueError("temperature must be >= 0, top_p in (0, 1] and top_k >= 0")
        if ((budget_B < 1) | (budget_B > t_max)).any():
            raise ValueError(f"budgets must be in [1, settings.max_new_tokens={t_max}]")

        max_pages = -(-(max(map(len, prompts)) + t_max) // size)
        shards = logical.split_ways("batch", self.slots)  # 1 without a mesh
        per_shard = self.slots // shards
        num_pages = self.num_pages or 1 + per_shard * (max_pages + 1) + self.prefill_rows * max_pages
        worst = max_pages + 1
        if num_pages - 1 < worst:
            raise ValueError(f"Engine num_pages={num_pages}: a row of {max(map(len, prompts))} prompt tokens and "
                             f"{t_max} new ones needs {worst} pages of {size} slots (plus the null page)")
        pools = self.pools = [PagePool(num_pages) for _ in range(shards)]
        self._free_rows = list(range(self.slots + 1))  # rows of EngineState.prompt_logits_QxV
        state = self._init(num_pages, max_pages, t_max, shards)
        pages_SxM = np.zeros((self.slots, max_pages), np.int32)
        slot_pages: list[list[int]] = [[] for _ in range(self.slots)]
        slot_row = [-1] * self.slots
        unassigned = collections.deque(range(n))  # prompts no shard has taken yet
        queues = [collections.deque() for _ in range(shards)]  # each shard's waiting (prompt, sample) requests
        prefilled: dict[int, _Prompt] = {}
        out_tokens = np.full((n * g, t_max), self.pad_id, np.int32)
        out_logps = np.zeros((n * g, t_max), np.float32)
        out_lengths = np.zeros((n * g,), np.int32)
        out_truncated = np.zeros((n * g,), bool)
        live = np.zeros((self.slots,), bool)

        while unassigned or any(queues) or live.any():
            state = self._admit_waiting(params, state, rng, prompts, unassigned, queues, prefilled, pools, pages_SxM,
                                        slot_pages, slot_row, live, budget_B, temperature_B, top_p_B, top_k_B)
            waiting = bool(unassigned) or any(queues)
            state = self._decode(params, state, jnp.asarray(pages_SxM), jnp.asarray(waiting),
                                 stop_ids=settings.stop_ids)
            now_live = np.array(to_host(state.live_S))  # the same on every process: their host loops agree
            ended = np.flatnonzero(live & ~now_live)
            if ended.size:
                idx = jnp.asarray(ended)
                tokens, logps, counts, stopped = to_host(
                    (state.tokens_SxT[idx], state.logps_SxT[idx], state.count_S[idx], state.stopped_S[idx]))
                for i, s in enumerate(ended):
                    row = slot_row[s]
                    out_tokens[row], out_logps[row] = tokens[i], logps[i]
                    out_lengths[row], out_truncated[row] = counts[i], not stopped[i]
                    pools[s // per_shard].release(slot_pages[s])
                    slot_pages[s], slot_row[s] = [], -1
                    pages_SxM[s] = 0
            live = now_live
        held = sum(pool.in_use for pool in pools)
        if held:
            raise RuntimeError(f"page accounting: {held} pages still held after every row ended")
        return SampleOutput(tokens_BxT=jnp.asarray(out_tokens), logps_BxT=jnp.asarray(out_logps),
                            lengths_B=jnp.asarray(out_lengths), truncated_B=jnp.asarray(out_truncated))

    def _admit_waiting(self, params, state, rng, prompts, unassigned, queues, prefilled, pools, pages_SxM,
                       slot_pages, slot_row, live, budget_B, temperature_B, top_p_B, top_k_B) -> EngineState:
        """Each shard's free slots take its waiting requests (a new prompt when it has none), prefilling their
        prompts first, while the shard's pool has their pages."""
        size, g = self.page_size, len(budget_B) // len(prompts)
        shards = len(pools)
        per_shard = self.slots // shards
        chosen: list[tuple[int, int, int]] = []  # (slot, prompt, sample)
        for d, (pool, queue) in enumerate(zip(pools, queues)):
            spare = len(pool.free)
            for s in range(d * per_shard, (d + 1) * per_shard):
                if live[s]:
                    continue
                if not queue and unassigned:
                    b = unassigned.popleft()
                    queue.extend((b, j) for j in range(g))
                if not queue:
                    break
                b, j = queue[0]
                length = len(prompts[b])
                need = -(-(length + int(budget_B[b * g + j])) // size) - length // size  # own pages: tail copy + new
                if b not in prefilled and not any(c[1] == b for c in chosen):
                    need += -(-length // size)  # the prompt's own pages, held until its last sample is in
                if need > spare:
                    break
                spare -= need
                queue.popleft()
                chosen.append((s, b, j))
        if not chosen:
            if not live.any() and (unassigned or any(queues)):
                raise RuntimeError("page pool too small for the next request (raise Engine num_pages)")
            return state
        new = [list(dict.fromkeys(b for s, b, _ in chosen if s // per_shard == d and b not in prefilled))
               for d in range(shards)]
        for start in range(0, max(map(len, new)), self.prefill_rows):
            state = self._prefill_prompts(params, state, prompts, [lst[start:start + self.prefill_rows] for lst in new],
                                          prefilled, pools, g)

        a = self.slots  # one admission entry per slot (S: not admitted, dropped): one compile
        slot_A = np.full((a,), self.slots, np.int32)
        pages_AxM = np.zeros((a, pages_SxM.shape[1]), np.int32)
        lengths_A = np.zeros((a,), np.int32)
        copy_from_A, copy_to_A = np.zeros((a,), np.int32), np.zeros((a,), np.int32)
        budget_A, top_k_A = np.zeros((a,), np.int32), np.zeros((a,), np.int32)
        temperature_A, top_p_A = np.zeros((a,), np.float32), np.ones((a,), np.float32)
        prompt_A, digest_A, sample_A = np.zeros((a,), np.int32), np.zeros((a,), np.int32), np.zeros((a,), np.int32)
        for s, b, j in chosen:
            record, row = prefilled[b], b * g + j
            pool = pools[record.shard]
            full = record.length // size
            shared = record.pages[:full]
            pool.share(shared)
            own = pool.take(-(-(record.length + int(budget_B[row])) // size) - full)
            if record.length % size:  # the partly filled last prompt page: this row's own copy
                copy_from_A[s], copy_to_A[s] = record.pages[full], own[0]
            pages = shared + own
            slot_pages[s], slot_row[s], live[s] = pages, row, True
            pages_SxM[s] = 0
            pages_SxM[s, :len(pages)] = pages
            slot_A[s], pages_AxM[s], lengths_A[s] = s, pages_SxM[s], record.length
            budget_A[s], top_k_A[s] = budget_B[row], top_k_B[row]
            temperature_A[s], top_p_A[s] = temperature_B[row], top_p_B[row]
            prompt_A[s], digest_A[s], sample_A[s] = record.row, prompt_digest(prompts[b]), j
            record.waiting -= 1
            if record.waiting == 0:
                pool.release(record.pages)
                self._free_rows.append(record.row)
                del prefilled[b]
        return self._admit(state, rng, slot_A, prompt_A, digest_A, sample_A, budget_A, temperature_A, top_p_A,
                           top_k_A, pages_AxM, lengths_A, copy_from_A, copy_to_A)

    def _prefill_prompts(self, params, state, prompts, batches: list[list[int]], prefilled, pools,
                         group_size: int) -> EngineState:
        """Prefill up to `prefill_rows` prompts of each shard (batches[d]: shard d's) chunk by chunk into fresh
        pages of its pool; record each one's logits. Row d·prefill_rows + i is shard d's i-th prompt. The call
        always has prefill_rows rows per shard, however few prompts it holds: XLA:CPU's matmuls round a row
        differently at another row count, and a prompt's logits must not depend on what else is admitted."""
        size, chunk, per = self.page_size, self.prefill_chunk, self.prefill_rows
        rows = per * len(batches)
        max_pages = state.cache.pages_BxM.shape[1]
        pages_RxM = np.zeros((rows, max_pages), np.int32)
        placed = [(d * per + i, b) for d, batch in enumerate(batches) for i, b in enumerate(batch)]
        for r, b in placed:
            d = r // per
            pages = pools[d].take(-(-len(prompts[b]) // size))
            pages_RxM[r, :len(pages)] = pages
            prefilled[b] = _Prompt(len(prompts[b]), d, pages, self._free_rows.pop(), group_size)
        for start in range(0, max(len(prompts[b]) for _, b in placed), chunk):
            tokens_RxC = np.full((rows, chunk), self.pad_id, np.int32)
            mask_RxC = np.zeros((rows, chunk), bool)
            lengths_R = np.zeros((rows,), np.int32)
            table_R = np.full((rows,), self.slots + 1, np.int32)  # out of range: no logits kept
            for r, b in placed:
                length = len(prompts[b])
                piece = prompts[b][start:start + chunk]
                tokens_RxC[r, :len(piece)], mask_RxC[r, :len(piece)] = piece, True
                lengths_R[r] = min(start, length)
                if start < length <= start + chunk:  # the prompt ends in this chunk
                    table_R[r] = prefilled[b].row
            state = self._prefill(params, state, pages_RxM, lengths_R, tokens_RxC, mask_RxC, table_R)
        return state
