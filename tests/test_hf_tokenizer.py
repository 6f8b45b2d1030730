"""tokenizer.json (Hugging Face `tokenizers`) behind r1jax's tokenizer interface."""
import json

import jax
import numpy as np
import pytest

from r1jax.config import ModelConfig, SamplingSettings
from r1jax.data import ArithmeticConfig, PromptTemplate, generate_arithmetic
from r1jax.evaluate import evaluate
from r1jax.hf_tokenizer import HFTokenizer
from r1jax.model import init_params
from r1jax.tokenizer import TokenizerError

from bpe_tokenizer import write_bpe_tokenizer



@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A byte-level BPE tokenizer.json like Qwen2.5's, trained here offline, plus its config."""
    path = tmp_path_factory.mktemp("hf_tok")
    write_bpe_tokenizer(path, [f"Compute {i} + {i + 1}. The answer is {2 * i + 1}.\n" for i in range(200)], 320,
                        {"eos_token": "<|im_end|>", "pad_token": {"content": "<|endoftext|>"}, "bos_token": None})
    return path


def test_round_trip_and_special_ids(folder):
    tok = HFTokenizer.load(folder)
    text = "Compute 12 + 7.\n  <think> 12 + 7 = 19 </think> <answer> 19 </answer> ü"
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode("<think>")) == 1 and tok.token_id("<answer>") == tok.encode("<answer>")[0]
    assert tok.eos_id == tok.token_id("<|im_end|>") and tok.pad_id == tok.token_id("<|endoftext|>")
    assert tok.bos_id == -1 and tok.encode("x", add_bos=True) == tok.encode("x")
    assert tok.decode(tok.encode("hi", add_eos=True) + [tok.pad_id]) == "hi"
    ids, lengths = tok.encode_batch(["a", "Compute 3"], left_pad=True, pad_to_multiple=8)
    assert ids.shape[1] == 8 and (ids[0, :-int(lengths[0])] == tok.pad_id).all()


def test_bad_folders_are_clear_errors(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        HFTokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        HFTokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text((folder / "tokenizer.json").read_text())
    with pytest.raises(TokenizerError, match="no eos_token"):
        HFTokenizer.load(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<missing>"}))
    with pytest.raises(TokenizerError, match="'<missing>' is not in the vocabulary"):
        HFTokenizer.load(tmp_path)


def test_sampler_and_evaluation_run_with_it(folder):
    tok = HFTokenizer.load(folder)
    cfg = ModelConfig.tiny(vocab_size=tok.vocab_size)
    problems = generate_arithmetic(ArithmeticConfig(num_ops=1, max_value=9), "test", 2, seed=0)
    result = evaluate(init_params(cfg, jax.random.key(0)), cfg, tok, problems,
                      settings=SamplingSettings.for_evaluation(6),
                      template=PromptTemplate("q", "Q: {prompt} A:"), rng=jax.random.key(1), k=2)
    assert len(result.records) == 2 and all(len(r.completions) == 2 for r in result.records)
    assert np.isfinite(result.summary()["pass@1"])


def test_generation_config_adds_stop_ids(folder, tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_text((folder / name).read_text())
    assert HFTokenizer.load(tmp_path).stop_ids == (HFTokenizer.load(tmp_path).eos_id,)
    tok = HFTokenizer.load(folder)
    end_of_text = tok.token_id("<|endoftext|>")
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [tok.eos_id, end_of_text]}))
    assert HFTokenizer.load(tmp_path).stop_ids == (tok.eos_id, end_of_text)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": end_of_text}))
    assert HFTokenizer.load(tmp_path).stop_ids == (tok.eos_id, end_of_text)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": "<|endoftext|>"}))
    with pytest.raises(TokenizerError, match="generation_config.json: eos_token_id must be an int"):
        HFTokenizer.load(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [10 ** 6]}))
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        HFTokenizer.load(tmp_path)


def test_evaluation_through_the_engine_stops_at_the_tokenizers_stop_ids(folder, tmp_path):
    from r1jax.engine import Engine

    class Recording(Engine):
        def generate(self, *args, settings, **kw):
            self.settings = settings
            return super().generate(*args, settings=settings, **kw)

    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_text((folder / name).read_text())
    end_of_text = HFTokenizer.load(folder).token_id("<|endoftext|>")
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [end_of_text]}))
    tok = HFTokenizer.load(tmp_path)
    cfg = ModelConfig.tiny(vocab_size=tok.vocab_size)
    engine = Recording(cfg, pad_id=tok.pad_id, slots=4, page_size=8)
    problems = generate_arithmetic(ArithmeticConfig(num_ops=1, max_value=9), "test", 2, seed=0)
    result = evaluate(init_params(cfg, jax.random.key(0)), cfg, tok, problems,
                      settings=SamplingSettings.for_evaluation(6), sampler=engine,
                      template=PromptTemplate("q", "Q: {prompt} A:"), rng=jax.random.key(1), k=2)
    assert engine.settings.stop_ids == (tok.eos_id, end_of_text) and len(result.records) == 2
