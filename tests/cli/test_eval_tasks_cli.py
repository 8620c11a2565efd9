"""`llm-lab eval PACKAGE --tasks ...`: the harness's table and results JSON, and one line for each user mistake."""

from __future__ import annotations

import json
import math

import pytest
import torch
from harness_tasks import MC_DOCS, TEXT_DOCS, write_tasks
from package_helpers import bpe_tokenizer, char_tokenizer, make_package
from test_extras import hide_modules

from llm_lab.cli import main
from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.core.package.io import save_model_package

pytest.importorskip("lm_eval")


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("llm-lab: error: ") and "Traceback" not in err, err
    return lines[-1]


def uniform_package(path, tokenizer):
    """Every logit zero: each token has probability 1 / V, so every score can be worked out by hand."""
    model = MiniGPT(
        MiniGPTConfig(vocab_size=tokenizer.vocab_size, context_length=32, n_layer=1, n_head=2, n_embd=8)
    ).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()
    save_model_package(path, model.config, tokenizer, model)
    return path


def test_tasks_print_the_harness_table_and_write_its_json(capsys, tmp_path):
    """A uniform model over V tokens gives a document of n tokens and b UTF-8 bytes n log2(V) bits, so
    ``bits_per_byte = sum(n) log2(V) / sum(b)`` over the documents; multiple choice picks the choice of fewest
    tokens (the first of equals)."""
    tok = bpe_tokenizer()
    package = uniform_package(tmp_path / "pkg", tok)
    tasks = write_tasks(tmp_path / "tasks")
    out_json = tmp_path / "results.json"
    code = main(
        [
            "eval",
            str(package),
            "--tasks",
            "tiny_mc,tiny_ppl",
            "--include-path",
            str(tasks),
            "--output-path",
            str(out_json),
            "--batch-size",
            "3",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "| Tasks  |Version|Filter|n-shot|" in out and "|tiny_mc |" in out and "|tiny_ppl|" in out
    assert "bits_per_byte" in out and f"wrote {out_json}" in out
    results = json.loads(out_json.read_text())["results"]

    tokens = sum(len(tok.encode(d["text"])) for d in TEXT_DOCS)
    n_bytes = sum(len(d["text"].encode()) for d in TEXT_DOCS)
    assert results["tiny_ppl"]["bits_per_byte,none"] == pytest.approx(tokens * math.log2(tok.vocab_size) / n_bytes)

    def picked(doc):  # fewest continuation tokens wins; the harness's argmax takes the first of equals
        lengths = [len(tok.encode(doc["ctx"] + c)) - len(tok.encode(doc["ctx"])) for c in doc["choices"]]
        return lengths.index(min(lengths))

    accuracy = sum(picked(doc) == doc["label"] for doc in MC_DOCS) / len(MC_DOCS)
    assert results["tiny_mc"]["acc,none"] == pytest.approx(accuracy)


def test_char_package_runs_choices_and_generation_but_not_rolling(capsys, tmp_path):
    package, _ = make_package(tmp_path / "pkg", char_tokenizer())
    tasks = write_tasks(tmp_path / "tasks")
    assert main(["eval", str(package), "--tasks", "tiny_mc,tiny_gen", "--include-path", str(tasks)]) == 0
    out = capsys.readouterr().out
    assert "acc" in out and "exact_match" in out
    assert main(["eval", str(package), "--tasks", "tiny_ppl", "--include-path", str(tasks)]) == 2
    assert "has no end-of-text token, so nothing can predict the first token" in one_line_error(capsys.readouterr().err)


def test_mistakes_are_one_line(capsys, tmp_path):
    package, _ = make_package(tmp_path / "pkg", bpe_tokenizer())
    tasks = write_tasks(tmp_path / "tasks")

    (tasks / "broken.yaml").write_text("task: broken\noutput_type: [unclosed\n", encoding="utf-8")
    assert main(["eval", str(package), "--tasks", "tiny_mc", "--include-path", str(tasks)]) == 2
    assert "broken.yaml: not a valid task file: while parsing" in one_line_error(capsys.readouterr().err)
    (tasks / "broken.yaml").unlink()

    (tasks / "mc.jsonl").unlink()  # a task whose data file is gone
    assert main(["eval", str(package), "--tasks", "tiny_mc", "--include-path", str(tasks)]) == 2
    assert "the harness could not run tiny_mc: FileNotFoundError: " in one_line_error(capsys.readouterr().err)

    assert main(["eval", str(package), "--tasks", "tiny_mc", "--include-path", str(tmp_path / "none")]) == 2
    assert "--include-path: no such folder" in one_line_error(capsys.readouterr().err)

    assert main(["eval", str(package), "--tasks", "tiny_mc", "--max-tokens", "5"]) == 2
    assert "--max-tokens applies to --data only" in one_line_error(capsys.readouterr().err)

    assert main(["eval", str(package), "--tasks", " , "]) == 2
    assert "--tasks: give at least one task name" in one_line_error(capsys.readouterr().err)

    with pytest.raises(SystemExit):  # --data and --tasks are one or the other
        main(["eval", str(package), "--tasks", "tiny_mc", "--data", "x.txt"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.slow  # an unknown name is looked up among the harness's own tasks too: indexing them takes ~30 s
def test_unknown_task_is_one_line(capsys, tmp_path):
    package, _ = make_package(tmp_path / "pkg", bpe_tokenizer())
    tasks = write_tasks(tmp_path / "tasks")
    assert main(["eval", str(package), "--tasks", "tiny_nope", "--include-path", str(tasks)]) == 2
    assert "unknown task 'tiny_nope': not one of the harness's tasks or in" in one_line_error(capsys.readouterr().err)


def test_without_the_harness_the_extra_is_named(monkeypatch, capsys, tmp_path):
    hide_modules(monkeypatch, "lm_eval")
    assert main(["eval", str(tmp_path), "--tasks", "hellaswag"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert 'lm-evaluation-harness (lm_eval is missing): pip install "foundry-llm[eval]"' in line


def test_dtype_scores_the_tasks_with_the_decode_copy(tmp_path):
    """``--dtype int8`` with ``--tasks`` runs the int8 decode copy (it was silently fp32): the log-likelihoods are
    those of ``prepare_for_decode(model, "int8")``, close to fp32's but not equal; an unknown dtype is one line."""
    from lm_eval.api.instance import Instance

    from llm_lab.core.decode import prepare_for_decode
    from llm_lab.core.harness import LabLM

    tok = bpe_tokenizer()
    package, model = make_package(tmp_path / "pkg", tok)
    requests = [
        Instance(request_type="loglikelihood", doc={}, arguments=(doc["ctx"], choice), idx=i)
        for i, doc in enumerate(MC_DOCS)
        for choice in doc["choices"]
    ]
    fp32 = [score for score, _ in LabLM.from_package(package).loglikelihood(requests, disable_tqdm=True)]
    int8 = [score for score, _ in LabLM.from_package(package, dtype="int8").loglikelihood(requests, disable_tqdm=True)]
    copy = LabLM(prepare_for_decode(model, "int8"), tok).loglikelihood(requests, disable_tqdm=True)
    assert int8 == [score for score, _ in copy]
    assert int8 != fp32 and max(abs(a - b) for a, b in zip(int8, fp32, strict=True)) < 0.05
    with pytest.raises(ValueError, match="unknown decode dtype 'int4'; choose one of: auto, fp32, bf16, int8"):
        LabLM.from_package(package, dtype="int4")


def test_dtype_reaches_the_cli_tasks_route(capsys, tmp_path):
    package, _ = make_package(tmp_path / "pkg", bpe_tokenizer())
    tasks = write_tasks(tmp_path / "tasks")
    assert main(["eval", str(package), "--tasks", "tiny_mc", "--include-path", str(tasks), "--dtype", "int4"]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        "llm-lab: error: unknown decode dtype 'int4'; choose one of: auto, fp32, bf16, int8"
    )
    assert main(["eval", str(package), "--tasks", "tiny_mc", "--include-path", str(tasks), "--dtype", "int8"]) == 0
    assert "tiny_mc" in capsys.readouterr().out
