"""The output rule (llm_lab.utils.outputs): a result file or folder replaces only an earlier llm-lab output,
atomically; anything of the user's is refused and left byte-identical."""

from __future__ import annotations

import json
import os

import pytest

from llm_lab.utils.outputs import (
    FOLDER_MARKER,
    MARK_KEY,
    check_output_directory,
    check_output_file,
    image_metadata,
    is_llm_lab_file,
    output_directory,
    output_file,
    write_output_json,
)
from llm_lab.utils.plotting import plot_runs


def _metrics(run):
    run.mkdir()
    (run / "metrics.csv").write_text("step,tokens,train_loss,val_loss\n1,10,3.0,3.1\n2,20,2.5,2.7\n")
    return run


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_every_figure_carries_the_mark_and_a_users_figure_does_not(tmp_path, suffix):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ours = plot_runs(_metrics(tmp_path / "run"), tmp_path / f"ours{suffix}")
    fig = Figure()
    FigureCanvasAgg(fig)
    fig.subplots().plot([1, 2])
    fig.savefig(tmp_path / f"theirs{suffix}")  # matplotlib's own metadata only
    assert is_llm_lab_file(ours) and not is_llm_lab_file(tmp_path / f"theirs{suffix}")
    assert image_metadata(f"x{suffix}") == {"Creator": "llm-lab output"} and image_metadata("x.jpg") is None


def test_a_figure_is_known_by_its_content_not_its_name(tmp_path):
    ours = plot_runs(_metrics(tmp_path / "run"), tmp_path / "fig")  # no suffix: a PNG
    (tmp_path / "notes.png").write_text("a text file that says llm-lab output")
    assert is_llm_lab_file(ours) and not is_llm_lab_file(tmp_path / "notes.png")
    check_output_file(ours)  # a re-run may replace it


def test_json_is_ours_only_with_the_mark_as_its_first_key(tmp_path):
    ours = write_output_json(tmp_path / "r.json", "bench generate", {"rows": [1]})
    assert json.loads(ours.read_text()) == {MARK_KEY: "llm-lab bench generate", "rows": [1]}
    (tmp_path / "late.json").write_text(json.dumps({"rows": [1], MARK_KEY: "llm-lab"}))
    assert is_llm_lab_file(ours) and not is_llm_lab_file(tmp_path / "late.json")
    write_output_json(ours, "bench generate", {"rows": [2]})  # a re-run replaces our own file
    assert json.loads(ours.read_text())["rows"] == [2]


def test_a_users_file_a_directory_a_link_and_a_file_parent_are_refused_unchanged(tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_bytes(b'{"mine": true}')
    with pytest.raises(ValueError, match=r"--json .*mine\.json exists and is not an llm-lab output .*remove the file"):
        write_output_json(mine, "bench env", {})
    assert mine.read_bytes() == b'{"mine": true}'
    with pytest.raises(ValueError, match=r"--out .* is a directory; give the path of a file"):
        check_output_file(tmp_path)
    (tmp_path / "link.png").symlink_to(mine)
    with pytest.raises(ValueError, match=r"link\.png is a symbolic link \(to .*mine\.json\); .*never through a link"):
        check_output_file(tmp_path / "link.png")
    with pytest.raises(NotADirectoryError, match=r"mine\.json is a file, not a folder"):
        check_output_file(mine / "x.png")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match="is not a regular file"):
        check_output_file(tmp_path / "fifo")
    assert mine.read_bytes() == b'{"mine": true}'


def test_output_file_leaves_the_old_file_when_the_writer_fails(tmp_path):
    path = write_output_json(tmp_path / "r.json", "x", {"n": 1})
    before = path.read_bytes()
    with pytest.raises(RuntimeError), output_file(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_an_output_folder_is_marked_replaced_whole_and_a_users_folder_refused(tmp_path):
    out = tmp_path / "out"
    with output_directory(out, "inspect") as staged:
        (staged.path / "a.csv").write_text("1\n")
        (staged.path / "sub").mkdir()
        (staged.path / "sub" / "b.md").write_text("# b\n")
        assert not out.exists() and staged.final(staged.path / "sub" / "b.md") == out / "sub" / "b.md"
    marker = json.loads((out / FOLDER_MARKER).read_text())
    assert marker == {MARK_KEY: "llm-lab inspect", "files": ["a.csv", "sub/b.md"]}
    with output_directory(out, "inspect") as staged:  # a re-run: the new folder replaces the old one whole
        (staged.path / "c.csv").write_text("2\n")
    assert sorted(p.name for p in out.iterdir()) == ["c.csv", FOLDER_MARKER]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left beside it

    (out / "notes.txt").write_text("mine")  # a file of the user's in our folder makes it theirs
    with pytest.raises(ValueError, match=r"holds files llm-lab did not write there \(notes\.txt\)"):
        check_output_directory(out)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("mine")
    refused = r"is not empty and is not an llm-lab result folder \(no llm_lab_output\.json; it holds thesis\.tex\)"
    with pytest.raises(ValueError, match=refused), output_directory(theirs, "inspect"):
        pass
    (tmp_path / "link").symlink_to(theirs)
    with pytest.raises(ValueError, match=r"link is a symbolic link .*never through a link"):
        check_output_directory(tmp_path / "link")
    with pytest.raises(ValueError, match=r"thesis\.tex is a file; give a folder"):
        check_output_directory(theirs / "thesis.tex")
    assert (theirs / "thesis.tex").read_text() == "mine" and (out / "notes.txt").read_text() == "mine"


def test_a_file_the_user_saves_in_the_folder_while_the_command_works_is_kept(tmp_path):
    out = tmp_path / "out"
    with output_directory(out, "inspect") as staged:
        (staged.path / "a.csv").write_text("1\n")
    refused = r"holds files llm-lab did not write there \(notes\.md\)"
    with pytest.raises(ValueError, match=refused), output_directory(out, "inspect") as staged:
        (staged.path / "b.csv").write_text("2\n")
        (out / "notes.md").write_text("mine")  # a long command: the user writes into out meanwhile
    assert (out / "notes.md").read_text() == "mine" and (out / "a.csv").read_text() == "1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the new results are discarded, not left beside


def test_a_failed_write_leaves_the_old_folder(tmp_path):
    out = tmp_path / "out"
    with output_directory(out, "x") as staged:
        (staged.path / "a.csv").write_text("old\n")
    with pytest.raises(RuntimeError), output_directory(out, "x") as staged:
        (staged.path / "a.csv").write_text("new\n")
        raise RuntimeError("boom")
    assert (out / "a.csv").read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_working_directory_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with output_directory(out, "x") as staged:
        (staged.path / "a.csv").write_text("1\n")
    monkeypatch.chdir(out)
    with pytest.raises(ValueError, match="is the current directory"):
        check_output_directory(out)
