"""tools/make_random_hf.py: a Qwen2.5-0.5B-shaped HF folder that the real presets' init_from path reads."""
import importlib.util
import json
import pathlib

import jax
import pytest

from r1jax.data import R1_ZERO, load_jsonl
from r1jax.hf import load_hf
from r1jax.hf_tokenizer import HFTokenizer
from r1jax.phases import source_model_config
from r1jax.phases.runner import abstract_params
from r1jax.tokenizer import REASONING_TAGS

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("make_random_hf", ROOT / "tools" / "make_random_hf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_full_shape_is_qwen25_05b(tool):
    cfg = tool.model_config("qwen2.5-0.5b")
    assert (cfg.vocab_size, cfg.embed_dim, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
            cfg.mlp_dim) == (151936, 896, 24, 14, 2, 64, 4864)
    # Qwen2.5-0.5B's parameter count (tied head), from shapes only
    assert sum(x.size for x in jax.tree.leaves(abstract_params(cfg))) == 494_032_768


def test_folder_loads_through_the_init_from_path(tool, tmp_path):
    summary = tool.make_random_hf(tmp_path, layers=1, vocab=1024, tokenizer_vocab=512, train_problems=6,
                                  test_problems=2)
    cfg = source_model_config(str(tmp_path))
    assert cfg == tool.model_config("qwen2.5-0.5b", layers=1, vocab=1024)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    _, params = load_hf(tmp_path)
    assert sum(x.size for x in jax.tree.leaves(params)) == summary["params"]

    tok = HFTokenizer.load(tmp_path)
    assert tok.vocab_size == summary["tokenizer_vocab"] <= cfg.vocab_size
    assert tok.eos_id == tok.pad_id == tok.token_id("<|endoftext|>") and tok.bos_id == -1
    for piece in (*REASONING_TAGS, "<|im_start|>", "<|im_end|>"):
        assert tok.encode(piece) == [tok.token_id(piece)]
    text = "<think> 3 + 4 = 7 </think> <answer> 7 </answer>"
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode([*tok.encode("7"), cfg.vocab_size - 1]) == "7"  # ids past the tokenizer decode to nothing

    train, test = load_jsonl(summary["train_jsonl"]), load_jsonl(summary["test_jsonl"])
    assert (len(train), len(test)) == (6, 2) and all(p.answer.isdigit() for p in train + test)
    prompt = R1_ZERO.render(test[0].question)
    assert tok.decode(tok.encode(prompt)) == prompt
