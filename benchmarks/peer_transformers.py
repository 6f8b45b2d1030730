"""Peer measurement: Hugging Face transformers (PyTorch, CPU) on r1jax's reference model M.

    python benchmarks/peer_transformers.py                 # full run, writes benchmarks/peer_transformers.json
    python benchmarks/peer_transformers.py --quick         # tiny shapes, one repeat: a smoke test (seconds)
    python benchmarks/peer_transformers.py --attn eager    # eager attention instead of sdpa

Optional: needs torch and transformers (`pip install torch transformers`), which are NOT
dependencies of r1jax. It measures the same things as experiments/bench.py so README can
compare the two on one machine: the f32 matmul peak, a training step (AdamW) and
generation (greedy B=64, B=16; sampled B=64). Model M: Qwen2 f32, vocab 32000, hidden 512,
8 layers, 8 heads / 4 KV heads (head_dim 64), MLP 2048, QKV bias, untied head, random init.
Model FLOPs follow bench.py: 6*N*T + 12*L*S*d_attn*T, N = all parameters but the input embedding.
Each time is the best of --repeats runs after one warm-up run. Run it on an idle machine: torch's
OpenMP threads (one per CPU) slow down many-fold when another process shares the cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

try:
    import torch
    import transformers
    from transformers import Qwen2Config, Qwen2ForCausalLM
except ImportError as e:  # optional peer measurement
    sys.exit(f"peer_transformers.py needs torch and transformers ({e}); "
             "install them with `pip install torch transformers` (not r1jax dependencies)")

from r1jax.timing import best_time, train_flops  # noqa: E402  (standard library only: no jax import)


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    a = torch.randn(n, n, dtype=torch.float32)
    b = torch.randn(n, n, dtype=torch.float32)
    return 2 * n ** 3 / best_time(lambda: a @ b, repeats)


def make_model(attn: str) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=32000, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=4, head_dim=64, intermediate_size=2048, tie_word_embeddings=False,
                      max_position_embeddings=4096, torch_dtype=torch.float32, attn_implementation=attn)
    return Qwen2ForCausalLM(cfg).float()


def bench_train(model, batch: int, seq: int, repeats: int, peak: float) -> dict:
    cfg = model.config
    ids = torch.randint(0, cfg.vocab_size, (batch, seq))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t = best_time(step, repeats)
    tokens = batch * seq
    n = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    flops = train_flops(n, 0, tokens, 0, cfg.num_hidden_layers, seq, cfg.num_attention_heads * cfg.head_dim)
    return {"batch": batch, "seq": seq, "time_s": t, "tokens_per_s": tokens / t, "params_N": n,
            "flops_per_step": flops, "flops_per_s": flops / t, "peak_fraction": flops / t / peak}


def bench_generate(model, batch: int, prompt: int, new: int, repeats: int, sample: bool) -> dict:
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt))
    mask = torch.ones_like(ids)
    kw = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0) if sample else dict(do_sample=False)
    model.eval()

    def gen():
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                                 eos_token_id=None, pad_token_id=0, use_cache=True, **kw)
        assert out.shape == (batch, prompt + new), out.shape  # no row stopped early

    t = best_time(gen, repeats)
    return {"batch": batch, "prompt": prompt, "new_tokens": new, "sample": sample, "time_s": t,
            "gen_tokens_per_s": batch * new / t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes, one repeat (smoke test)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    ap.add_argument("--out", default="benchmarks/peer_transformers.json")
    args = ap.parse_args()

    torch.set_num_threads(os.cpu_count())
    load_start = os.getloadavg()
    if load_start[0] > 0.5:
        print(f"warning: load average {load_start[0]:.2f}; timings need an idle machine", file=sys.stderr)
    repeats = 1 if args.quick else args.repeats
    tb, ts, new = (2, 64, 8) if args.quick else (8, 512, 128)
    gen_batches = [4] if args.quick else [64, 16]

    peak = matmul_peak()
    model = make_model(args.attn)
    res = {"matmul_peak_flops_per_s": peak,
           "train": bench_train(model, tb, ts, repeats, peak)}
    res["generate_greedy"] = [bench_generate(model, b, 64, new, repeats, False) for b in gen_batches]
    res["generate_sample"] = bench_generate(model, gen_batches[0], 64, new, repeats, True)

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
           "platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
           "attn": args.attn, "quick": args.quick, "repeats": repeats,
           "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "results": res}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)

    tr = res["train"]
    rows = [("f32 matmul 2048^3 peak", f"{peak / 1e9:.1f} GFLOP/s"),
            (f"train step B={tb} S={ts} (AdamW)",
             f"{tr['tokens_per_s']:.0f} tok/s, {tr['flops_per_s'] / 1e9:.1f} GFLOP/s, "
             f"{tr['peak_fraction']:.2f} of peak")]
    for g in res["generate_greedy"] + [res["generate_sample"]]:
        kind = "sample" if g["sample"] else "greedy"
        rows.append((f"generate {kind} B={g['batch']} +{g['new_tokens']} tok",
                     f"{g['gen_tokens_per_s']:.0f} gen tok/s ({g['time_s']:.2f} s)"))
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, attn={args.attn}, "
          f"{os.cpu_count()} CPUs, load {load_start[0]:.2f} -> {out['loadavg_end'][0]:.2f}\n")
    print("| measurement | result |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
