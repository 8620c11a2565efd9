"""`llm-lab train` with `data.format: "chat"`: supervised fine-tuning on JSONL conversations, from scratch or from a
base package (its vocabulary grown for the chat tokens), resumed exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from package_helpers import make_package
from train_helpers import _error, _train

from llm_lab.cli.train import load_init_source
from llm_lab.core.chat import ChatTemplate
from llm_lab.core.chat.tasks import make_task, write_task_file
from llm_lab.core.package.io import load_package_or_run
from llm_lab.core.tokenization import CharTokenizer
from llm_lab.core.train.metrics import read_metrics
from llm_lab.core.train.run import RunConfig, prepare_run

SFT = {
    "model": {"context_length": 32, "n_layer": 1, "n_head": 2, "n_embd": 16},
    "train": {"batch_size": 4, "max_steps": 6, "lr": 1e-3, "min_lr": 1e-3, "warmup_steps": 0, "eval_interval": 3,
              "eval_batches": 2, "log_interval": 1, "device": "cpu", "precision": "fp32", "peak_flops": 1e12,
              "sample_interval": 0},
    "tokenizer": {"type": "char"},
    "data": {"format": "chat", "val_fraction": 0.2},
}


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "sft.json"
    path.write_text(json.dumps(SFT))
    return path


@pytest.fixture
def chats(tmp_path) -> Path:
    return write_task_file(make_task("addition", digits=2), 40, 0, tmp_path / "chats.jsonl")


def test_sft_from_scratch_resumes_exactly(config, chats, tmp_path) -> None:
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert _train("--config", config, "--data", chats, "--out", straight) == 0
    assert _train("--config", config, "--data", chats, "--out", run, "--set", "train.max_steps=3") == 0
    assert _train("--data", chats, "--out", run, "--resume", "--set", "train.max_steps=6") == 0
    loss = [(r["step"], r["train_loss"], r["val_loss"]) for r in read_metrics(straight / "metrics.csv")]
    assert loss == [(r["step"], r["train_loss"], r["val_loss"]) for r in read_metrics(run / "metrics.csv")]
    _, tokenizer, _ = load_package_or_run(run)
    ChatTemplate(tokenizer)  # the run's tokenizer carries the chat tokens
    record = json.loads((run / "run.json").read_text())["data_source"]
    assert record["format"] == "chat" and record["conversations"] == 40


def test_sft_from_a_base_package_grows_its_vocabulary(config, chats, tmp_path) -> None:
    base_tok = CharTokenizer.from_text("0123456789 +?=Whatis.")
    base, base_model = make_package(tmp_path / "base", base_tok)
    prepared = prepare_run(RunConfig.load(config), chats, tmp_path / "unused", init_from=load_init_source(base))
    model, tokenizer = prepared.model, prepared.tokenizer
    assert tokenizer.vocab_size == base_tok.vocab_size + 4
    assert model.config.context_length == base_model.config.context_length == 32  # the base model's architecture
    emb = model.tok_emb.weight.detach()
    torch.testing.assert_close(emb[: base_tok.vocab_size], base_model.tok_emb.weight.detach(), rtol=0, atol=0)
    torch.testing.assert_close(emb[base_tok.vocab_size :], base_model.tok_emb.weight.detach().mean(0).expand(4, -1))
    out = tmp_path / "sft"
    assert _train("--config", config, "--data", chats, "--out", out, "--init-from", base) == 0
    _, tokenizer, model = load_package_or_run(out)
    assert ChatTemplate(tokenizer).end_id == base_tok.vocab_size + 3 and model.config.vocab_size == tokenizer.vocab_size


def test_chat_data_must_be_conversations(config, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]}\n'
                   '{"messages": [{"role": "user", "content": "1+1?"}]}\n')
    assert _train("--config", config, "--data", bad, "--out", tmp_path / "r") == 2
    assert "bad.jsonl, line 2: the conversation has no assistant message" in _error(capsys)
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"messages": [{"role": "user", "content": "1" * 40},
                                             {"role": "assistant", "content": "2"}]}) + "\n")
    assert _train("--config", config, "--data", long, "--out", tmp_path / "r") == 2
    assert "long.jsonl, line 1: the conversation has 45 tokens, more than context_length + 1 = 33" in _error(capsys)
    assert not (tmp_path / "r").exists()
