"""Writes a Hugging Face folder of a real model shape with random weights, a BPE tokenizer and tiny GSM8K data.

    python tools/make_random_hf.py --shape qwen2.5-0.5b --out /tmp/qwen05-random
    python tools/make_random_hf.py --shape qwen2.5-0.5b --out /tmp/q2 --layers 2     # same widths, 2 layers
    python tools/make_random_hf.py --shape qwen2.5-0.5b --out /tmp/qv --layers 2 --vocab 8192

The folder is what `--set init_from=DIR` of the real presets reads: config.json
and model.safetensors written by `r1jax.hf.save_hf` (bf16 by default, as
Qwen2.5 ships; the loader casts to the run's param dtype), a byte-level BPE
tokenizer.json trained here on the prompts it will see (tests/bpe_tokenizer.py),
tokenizer_config.json with Qwen2.5-base special tokens (eos = pad =
<|endoftext|>, no bos), and DIR/data/{train,test}.jsonl in the GSM8K layout
({"question", "answer" ending "#### N"}). The tokenizer's vocabulary is much
smaller than the model's (as Qwen2.5's 151,665 tokens are fewer than its 151,936
embedding rows): ids past the tokenizer's vocabulary, which a random model
samples, decode to nothing. Offline; no torch. Not a trained model: rewards are
~0 and completions are noise, which is what a timing and memory run needs.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Qwen2.5-0.5B's config.json (hidden 896, 24 layers, 14 query / 2 kv heads of 64, SwiGLU 4864, tied embeddings)
SHAPES = {
    "qwen2.5-0.5b": dict(vocab_size=151936, embed_dim=896, num_layers=24, num_heads=14, num_kv_heads=2,
                         head_dim=64, mlp_dim=4864, qkv_bias=True, tie_embeddings=True, rope_theta=1_000_000.0,
                         norm_eps=1e-6, max_len=32768),
}
# Qwen2.5's special tokens (base model: eos = pad = <|endoftext|>, no bos) and the R1 reasoning tags
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TOKENIZER_CONFIG = {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "bos_token": None,
                    "model_max_length": 131072, "tokenizer_class": "Qwen2Tokenizer"}

_NAMES = ("Natalia", "Weng", "Betty", "Julie", "James", "Albert", "Ken", "Alexis", "Tina", "Mark")
_ITEMS = ("clips", "apples", "books", "marbles", "pencils", "cookies", "stickers", "shells")


def model_config(shape: str, layers: int | None = None, vocab: int | None = None):
    """The ModelConfig of `shape`, optionally with fewer layers or another vocabulary size (widths kept)."""
    from r1jax.config import ModelConfig

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {sorted(SHAPES)}")
    fields = dict(SHAPES[shape])
    if layers is not None:
        fields["num_layers"] = layers
    if vocab is not None:
        fields["vocab_size"] = vocab
    return ModelConfig(**fields)


def gsm8k_like(n: int, seed: int) -> list[dict]:
    """`n` two-step word problems in the GSM8K layout (question, worked answer ending '#### N')."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        a, b, c = rng.randint(2, 60), rng.randint(2, 40), rng.randint(2, 9)
        question = (f"{name} has {a} {item}. {name} buys {b} more {item}, then gives away {c} of them. "
                    f"How many {item} does {name} have now?")
        answer = (f"{name} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {item} after buying.\n"
                  f"After giving away {c}, {name} has {a + b} - {c} = <<{a + b}-{c}={a + b - c}>>{a + b - c} {item}.\n"
                  f"#### {a + b - c}")
        out.append({"question": question, "answer": answer})
    return out


def _bpe_writer():
    """tests/bpe_tokenizer.py's write_bpe_tokenizer, imported by path (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("_r1jax_tests_bpe_tokenizer", ROOT / "tests" / "bpe_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_bpe_tokenizer


def write_tokenizer(folder: Path, texts: list[str], vocab_size: int) -> int:
    """Byte-level BPE tokenizer.json + tokenizer_config.json with Qwen's special tokens; the tokenizer's size."""
    from tokenizers import AddedToken, Tokenizer

    _bpe_writer()(folder, texts, vocab_size, TOKENIZER_CONFIG)
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    missing = [t for t in QWEN_SPECIALS if raw.token_to_id(t) is None]
    if missing:  # the shared writer's list lacks <|im_start|>: add it as Qwen has it (a special added token)
        raw.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        raw.save(str(folder / "tokenizer.json"))
    return raw.get_vocab_size(with_added_tokens=True)


def write_data(folder: Path, train: int, test: int, seed: int) -> tuple[Path, Path]:
    """folder/train.jsonl and folder/test.jsonl (GSM8K layout, disjoint seeds)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "train.jsonl", folder / "test.jsonl"
    for path, rows in zip(paths, (gsm8k_like(train, seed), gsm8k_like(test, seed + 1))):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def make_random_hf(out: str | Path, shape: str = "qwen2.5-0.5b", layers: int | None = None,
                   vocab: int | None = None, dtype: str = "bfloat16", tokenizer_vocab: int = 2048,
                   train_problems: int = 64, test_problems: int = 4, seed: int = 0) -> dict:
    """Write the folder (weights, tokenizer, data); returns a summary (paths, sizes, parameter count)."""
    import jax

    from r1jax.data import R1_ZERO
    from r1jax.hf import save_hf
    from r1jax.model import init_params

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model_config(shape, layers, vocab)
    t0 = time.perf_counter()
    train_path, test_path = write_data(out / "data", train_problems, test_problems, seed)
    corpus = [R1_ZERO.render(r["question"]) + " <think> " + r["answer"].replace("\n", " ") + " </think> <answer> "
              + r["answer"].rpartition("####")[2].strip() + " </answer>" for r in gsm8k_like(400, seed + 2)]
    tok_vocab = write_tokenizer(out, corpus, tokenizer_vocab)
    if tok_vocab > cfg.vocab_size:
        raise ValueError(f"tokenizer has {tok_vocab} tokens but the model only {cfg.vocab_size} embedding rows")
    params = init_params(cfg, jax.random.key(seed))
    n_params = int(sum(x.size for x in jax.tree.leaves(params)))
    save_hf(out, cfg, params, dtype=dtype)
    del params
    weights = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    summary = dict(folder=str(out), shape=shape, layers=cfg.num_layers, vocab_size=cfg.vocab_size,
                   tokenizer_vocab=tok_vocab, params=n_params, dtype=dtype, weights_bytes=weights,
                   train_jsonl=str(train_path), test_jsonl=str(test_path), model=dataclasses.asdict(cfg),
                   seconds=time.perf_counter() - t0)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(SHAPES))
    parser.add_argument("--out", required=True, help="folder to write (created)")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers than the shape has (widths kept)")
    parser.add_argument("--vocab", type=int, default=None, help="another model vocabulary size (embedding rows)")
    parser.add_argument("--dtype", default="bfloat16", help="safetensors dtype (bfloat16 as Qwen2.5, or float32)")
    parser.add_argument("--tokenizer-vocab", type=int, default=2048, help="BPE vocabulary target")
    parser.add_argument("--train-problems", type=int, default=64)
    parser.add_argument("--test-problems", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    summary = make_random_hf(args.out, args.shape, args.layers, args.vocab, args.dtype, args.tokenizer_vocab,
                             args.train_problems, args.test_problems, args.seed)
    summary.pop("model")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
