"""``llm-lab inspect PACKAGE --text ... --out DIR``: tables and figures of one traced pass, for character and BPE
packages; user mistakes end in one line and exit code 2."""

from __future__ import annotations

import math

import pytest
import torch
from package_helpers import LLAMA_LIKE, bpe_tokenizer, char_tokenizer, make_package

from llm_lab.cli import main
from llm_lab.core.decode import score_tokens
from llm_lab.experiments.tables import read_csv

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # matplotlib draws six panels and a grid: several seconds on a loaded machine
@pytest.mark.parametrize(("tokenizer", "overrides"), [(char_tokenizer, {}), (bpe_tokenizer, LLAMA_LIKE)],
                         ids=["char-gpt2", "bpe-llama"])  # fmt: skip
def test_inspect_writes_tables_and_figures(tmp_path, capsys, tokenizer, overrides):
    tok = tokenizer()
    path, model = make_package(tmp_path / "pkg", tok, **overrides)
    text = "the quick brown fox"
    out = tmp_path / "inside"
    assert main(["inspect", str(path), "--text", text, "--out", str(out), "--top", "3"]) == 0
    printed = capsys.readouterr().out
    names = ["tokens.csv", "tokens.md", "attention.png", "logit_lens.csv", "logit_lens.md", "logit_lens.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "llm_lab_output.json"])
    assert all((out / n).read_bytes().startswith(PNG) for n in names if n.endswith(".png"))

    ids = tok.encode(text)
    rows = read_csv(out / "tokens.csv")
    assert [int(r["token_id"]) for r in rows] == ids
    assert rows[0]["logprob"] == "" and rows[1]["alternatives"].count(",") == 2  # three alternatives
    scored = score_tokens(model, ids)[0]
    got = [float(r["logprob"]) for r in rows[1:]]
    assert got == pytest.approx([s.logprob for s in scored[1:]], abs=1e-5)
    mean = -sum(got) / len(got)
    assert f"{len(ids)} tokens; mean loss {mean:.4f} nats/token (perplexity {math.exp(mean):.3f})" in printed

    lens = read_csv(out / "logit_lens.csv")
    assert len(lens) == 3 * len(ids)  # embeddings + 2 layers, every position
    last = [r for r in lens if r["layer"] == "layer 2"]
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    predicted = logits[0].argmax(-1).tolist()
    assert [r["top_prediction"] for r in last] == [
        repr(tok.decode_bytes([i]).decode("utf-8", "replace")) for i in predicted
    ]
    markdown = (out / "logit_lens.md").read_text()
    assert markdown.splitlines()[2].startswith("| layer ") and "| embeddings |" in markdown


def test_inspect_names_bad_input(tmp_path, capsys):
    path, _ = make_package(tmp_path / "pkg", char_tokenizer())
    assert main(["inspect", str(path), "--text", "", "--out", str(tmp_path / "o")]) == 2
    assert "nothing to inspect: the text is empty" in capsys.readouterr().err
    assert main(["inspect", str(path), "--text", "the " * 9, "--out", str(tmp_path / "o")]) == 2
    assert "cannot inspect 36 tokens: the model sees at most max_positions=32" in capsys.readouterr().err
    (tmp_path / "file").write_text("mine")
    assert main(["inspect", str(path), "--text", "the", "--out", str(tmp_path / "file")]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err and (tmp_path / "file").read_text() == "mine"
