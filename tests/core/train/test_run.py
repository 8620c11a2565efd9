from pathlib import Path

import pytest

from llm_lab.core.model import MiniGPTConfig
from llm_lab.core.train.run import DataConfig, InitSource, RunConfig, TokenizerSpec, resolve_run_config

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


RUN_CONFIGS = sorted(p for p in CONFIGS.rglob("*.json") if p.name not in ("recipe.json", "rl.json"))


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_example_config_is_a_complete_run_config(path):
    config = RunConfig.load(path)
    assert RunConfig.from_dict(config.to_dict()) == config
    assert config.train.max_steps >= config.train.warmup_steps


def test_standard_cpu_recipe():
    c = RunConfig.load(CONFIGS / "shakespeare_char.json")
    assert (c.model.n_layer, c.model.n_head, c.model.n_embd, c.model.context_length, c.model.dropout) == (
        4,
        4,
        128,
        64,
        0,
    )
    t = c.train
    assert (t.batch_size, t.lr, t.min_lr, t.warmup_steps, t.max_steps, t.beta2) == (12, 1e-3, 1e-4, 100, 2000, 0.99)
    assert (t.precision, t.eval_interval, t.eval_batches, c.tokenizer.type) == ("fp32", 250, 20, "char")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"type": "bpe"}, r"tokenizer type 'bpe' needs vocab_size above 256"),
        ({"type": "char", "vocab_size": 100}, r"'char' takes its vocabulary from the corpus; remove vocab_size"),
        ({"type": "word"}, r"tokenizer.type='word': choose 'char' or 'bpe', or give tokenizer.path"),
        ({"path": "tok", "vocab_size": 300}, r"give either path \(a saved tokenizer\) or vocab_size"),
    ],
)
def test_tokenizer_spec_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TokenizerSpec(**kwargs)
    assert TokenizerSpec(path="tok").type is None


def test_data_config_and_sections():
    with pytest.raises(ValueError, match=r"data.val_fraction must be between 0 and 1"):
        DataConfig(val_fraction=0.0)
    with pytest.raises(ValueError, match=r"unknown section 'optim'; valid sections are: model, train, tokenizer, data"):
        RunConfig.from_dict({"optim": {}})
    with pytest.raises(ValueError, match=r"\[train\]: unknown key 'learning_rate'; valid keys are: batch_size"):
        RunConfig.from_dict({"train": {"learning_rate": 1.0}})


def test_a_new_run_needs_a_config(tmp_path):
    with pytest.raises(ValueError, match=r"a new run needs --config FILE.json"):
        resolve_run_config(None, tmp_path)


def _source() -> InitSource:
    config = MiniGPTConfig(vocab_size=10, context_length=8, n_layer=1, n_head=2, n_embd=16, pos_encoding="rope")
    return InitSource(model_config=config, tokenizer=None, state_dict={}, path="pkg")


def test_init_from_refuses_model_values_that_contradict_the_weights():
    """Before: ``train --init-from PACKAGE --set model.n_embd=64`` dropped the value without a word."""
    with pytest.raises(ValueError, match=r"^--init-from pkg: model.n_embd=64 \(the weights have 16\) contradicts the "
                       r"weights; fine-tuning keeps the source's architecture, so drop that --set \(only "
                       r"model.dropout, model.max_seq_len, model.attn_impl may change\)$"):
        _source().with_overrides(["train.lr=0.1", "model.n_embd=64"])
    with pytest.raises(ValueError, match=r"model.n_head=4 \(the weights have 2\), model.norm='rmsnorm' \(the weights "
                       r"have 'layernorm'\) contradict the weights"):
        _source().with_overrides(["model.norm=rmsnorm", "model.n_head=4"])


def test_init_from_takes_model_values_that_leave_the_weights_as_they_are():
    source = _source()
    assert source.with_overrides(["train.lr=0.1"]) is source
    tuned = source.with_overrides(["model.dropout=0.1", "model.max_seq_len=32", "model.n_embd=16"])
    assert (tuned.model_config.dropout, tuned.model_config.max_seq_len, tuned.model_config.n_embd) == (0.1, 32, 16)
