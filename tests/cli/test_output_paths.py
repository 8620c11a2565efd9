"""Every command that writes a result at a path the user names follows one rule (llm_lab.utils.outputs): a file or
folder of the user's is refused with one line and exit code 2 before any work and stays byte-identical; a symbolic
link, a folder where a file goes and a file where a folder goes are one line each; a re-run replaces the command's
own earlier output."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from package_helpers import char_tokenizer, make_package

from llm_lab.cli import main
from llm_lab.experiments.tables import read_csv
from llm_lab.utils.outputs import FOLDER_MARKER, is_llm_lab_file

USERS = b"\x89PNG\r\n\x1a\n my holiday photo, not a figure of llm-lab's"


def _cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def _refused(capsys, args, pattern: str) -> None:
    code, err = _cli(capsys, *args)
    assert code == 2 and re.fullmatch(rf"llm-lab: error: {pattern}\n", err), err


def _run(directory: Path) -> Path:
    directory.mkdir()
    with open(directory / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "tokens", "lr", "train_loss", "val_loss", "elapsed_s"])
        writer.writerows([[1, 64, 1e-3, 3.0, 3.1, 0.1], [2, 128, 1e-3, 2.5, 2.7, 0.2]])
    return directory


@pytest.fixture
def users_folder(tmp_path) -> Path:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_bytes(USERS)
    return folder


def _unchanged(folder: Path) -> None:
    assert [p.name for p in folder.iterdir()] == ["thesis.tex"] and (folder / "thesis.tex").read_bytes() == USERS


# --------------------------------------------------------------------------------------------------------- plot
def test_plot_replaces_its_own_figure_and_refuses_a_users_file(tmp_path, capsys):
    run = _run(tmp_path / "run")
    out = tmp_path / "fig.png"
    assert _cli(capsys, "plot", run, "--out", out)[0] == 0
    first = out.read_bytes()
    assert is_llm_lab_file(out)
    assert _cli(capsys, "plot", run, "--out", out, "--title", "again")[0] == 0  # a re-run replaces our figure
    assert out.read_bytes() != first and is_llm_lab_file(out)

    photo = tmp_path / "photo.png"
    photo.write_bytes(USERS)
    _refused(capsys, ["plot", run, "--out", photo],
             r"--out .*photo\.png exists and is not an llm-lab output \(it carries no llm-lab output mark\), so it "
             r"is left as it is: give another path, or remove the file yourself if it may go")  # fmt: skip
    _refused(capsys, ["plot", run, "--out", tmp_path], r"--out .* is a directory; give the path of a file to write .*")
    (tmp_path / "link.png").symlink_to(photo)
    _refused(capsys, ["plot", run, "--out", tmp_path / "link.png"], r"--out .*link\.png is a symbolic link .*")
    assert photo.read_bytes() == USERS and (tmp_path / "link.png").is_symlink()


def test_plot_default_figure_in_a_run_follows_the_rule(tmp_path, capsys):
    run = _run(tmp_path / "run")
    assert _cli(capsys, "plot", run)[0] == 0 and _cli(capsys, "plot", run)[0] == 0  # RUN/loss.png, then again
    (run / "loss.png").write_bytes(USERS)
    _refused(capsys, ["plot", run], r"--out .*loss\.png exists and is not an llm-lab output .*")
    assert (run / "loss.png").read_bytes() == USERS


# ------------------------------------------------------------------------------------------------------ inspect
@pytest.mark.slow  # two traced passes, twelve figures
def test_inspect_replaces_its_own_folder_whole(tmp_path, capsys):
    package, _ = make_package(tmp_path / "pkg", char_tokenizer())
    out = tmp_path / "inside"
    assert _cli(capsys, "inspect", package, "--text", "the cat", "--out", out)[0] == 0
    assert _cli(capsys, "inspect", package, "--text", "the dog", "--out", out)[0] == 0
    assert [row["token"] for row in read_csv(out / "tokens.csv")] == [repr(c) for c in "the dog"]  # the 2nd run
    assert json.loads((out / FOLDER_MARKER).read_text())["llm_lab_output"] == "llm-lab inspect"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inside", "pkg"]  # nothing left beside it


def test_inspect_refuses_a_users_folder_a_link_to_it_and_a_file(tmp_path, capsys, users_folder):
    package, _ = make_package(tmp_path / "pkg", char_tokenizer())
    args = ["inspect", package, "--text", "the", "--out"]
    _refused(capsys, [*args, users_folder],
             r"--out .*mine is not empty and is not an llm-lab result folder \(no llm_lab_output\.json; it holds "
             r"thesis\.tex\), so it is left as it is: give a new or empty folder, or remove it yourself")  # fmt: skip
    (tmp_path / "link").symlink_to(users_folder)
    _refused(capsys, [*args, tmp_path / "link"], r"--out .*link is a symbolic link \(to .*mine\); .*")
    _refused(capsys, [*args, users_folder / "thesis.tex"], r"--out .*thesis\.tex is a file; give a folder .*")
    _unchanged(users_folder)


# -------------------------------------------------------------------------------------------------------- bench
def test_bench_env_json_replaces_its_own_file_and_refuses_a_users(tmp_path, capsys):
    out = tmp_path / "env.json"
    for _ in range(2):  # a re-run replaces our own report
        assert _cli(capsys, "bench", "env", "--no-compile", "--no-peak", "--json", out)[0] == 0
    assert json.loads(out.read_text())["llm_lab_output"] == "llm-lab bench env"
    mine = tmp_path / "mine.json"
    mine.write_bytes(b'{"mine": 1}')
    _refused(capsys, ["bench", "env", "--no-compile", "--no-peak", "--json", mine],
             r"--json .*mine\.json exists and is not an llm-lab output .*")  # fmt: skip
    assert mine.read_bytes() == b'{"mine": 1}'


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "generate", "--quick", "--json"],
        ["bench", "tokenizer", "--vocab-sizes", "280", "--repeats", "1", "--data", "CORPUS", "--json"],
        ["bench", "env", "--no-compile", "--no-peak", "--json"],
        ["bench", "eval", "PACKAGE", "--tasks", "lambada_openai", "--json"],
        ["eval", "PACKAGE", "--tasks", "lambada_openai", "--output-path"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_every_json_output_is_checked_before_any_work(tmp_path, capsys, args):
    if "eval" in args[:2]:
        pytest.importorskip("lm_eval")  # the [eval] extra
    (tmp_path / "corpus.txt").write_text("to be or not to be\n" * 20)
    args = [a.replace("CORPUS", str(tmp_path / "corpus.txt")).replace("PACKAGE", str(tmp_path / "pkg")) for a in args]
    mine = tmp_path / "mine.json"
    mine.write_bytes(b"[1, 2, 3]")
    _refused(capsys, [*args, mine], rf"{args[-1]} .*mine\.json exists and is not an llm-lab output .*")
    _refused(capsys, [*args, tmp_path], rf"{args[-1]} .* is a directory; give the path of a file to write .*")
    assert mine.read_bytes() == b"[1, 2, 3]"


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "attention", "--quick"],
        ["bench", "step", "--quick"],
        ["bench", "threads", "--quick"],
        ["bench", "serve", "--quick"],
        ["bench", "data", "--sizes", "0.05", "--train-mb", "0"],
        ["bench", "time-to-loss", "--quick"],
        ["experiment", "collect", "ROOT"],
    ],
    ids=lambda a: a[1],
)
def test_every_output_folder_is_checked_before_any_work(tmp_path, capsys, users_folder, args):
    args = [a.replace("ROOT", str(tmp_path)) for a in args]
    _refused(capsys, [*args, "--out", users_folder], r"--out .*mine is not empty and is not an llm-lab result .*")
    _refused(capsys, [*args, "--out", users_folder / "thesis.tex"], r"--out .*thesis\.tex is a file; give a folder.*")
    (tmp_path / "link").symlink_to(users_folder)
    _refused(capsys, [*args, "--out", tmp_path / "link"], r"--out .*link is a symbolic link .*")
    _unchanged(users_folder)


def test_bench_attention_replaces_its_own_folder(tmp_path, capsys):
    out = tmp_path / "attention"
    for _ in range(2):
        assert _cli(capsys, "bench", "attention", "--quick", "--modes", "fwd", "--no-memory", "--out", out)[0] == 0
    assert {p.name for p in out.iterdir()} == {"attention.csv", "attention.md", "attention.png", FOLDER_MARKER}
    (out / "notes.txt").write_text("mine")  # a file of the user's in it: the folder is theirs now
    _refused(capsys, ["bench", "attention", "--quick", "--out", out],
             r"--out .*attention holds files llm-lab did not write there \(notes\.txt\), so it is left as it is: "
             r"move them out, or give another folder")  # fmt: skip
    assert (out / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------------------------------- experiment
def test_experiment_collect_replaces_its_own_report_and_refuses_a_users_folder(tmp_path, capsys, users_folder):
    runs = tmp_path / "runs"
    runs.mkdir()
    _run(runs / "a")
    out = tmp_path / "report"
    for _ in range(2):
        code, err = _cli(capsys, "experiment", "collect", runs, "--out", out)
        assert code == 0, err
    assert {p.name for p in out.iterdir()} == {"report.md", "report.csv", "curves.png", FOLDER_MARKER}
    assert _cli(capsys, "experiment", "collect", runs)[0] == 0  # the default ROOT/report, twice
    assert _cli(capsys, "experiment", "collect", runs)[0] == 0
    _refused(capsys, ["experiment", "collect", runs, "--out", users_folder], r"--out .*mine is not empty .*")
    _unchanged(users_folder)


def test_experiment_collect_on_a_sweep_defaults_beside_the_sweeps_own_report(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    _run(sweep / "a")
    (sweep / "sweep.json").write_text("{}")  # a sweep folder: its report/ is the sweep's, not collect's
    (sweep / "report").mkdir()
    (sweep / "report" / "report.md").write_text("the sweep's report")
    for _ in range(2):
        code, err = _cli(capsys, "experiment", "collect", sweep)
        assert code == 0, err
    assert (sweep / "report" / "report.md").read_text() == "the sweep's report"
    assert (sweep / "collected" / "report.md").is_file()
