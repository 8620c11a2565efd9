"""Generated tasks: right reference replies, checkers that accept them and refuse wrong ones, files that round-trip."""

from __future__ import annotations

import random
import re

import pytest

from llm_lab.core.chat.tasks import (
    TASKS,
    AdditionSteps,
    TaskExample,
    make_task,
    read_task_file,
    synth_examples,
    write_task_file,
)


def test_the_registry_is_the_list_of_tasks() -> None:
    assert sorted(TASKS) == ["addition", "addition_steps", "reverse"]


@pytest.mark.parametrize("name", ["addition", "addition_steps"])
@pytest.mark.parametrize("digits", [1, 3, 5])
def test_addition_replies_hold_the_true_sum(name: str, digits: int) -> None:
    task = make_task(name, digits=digits)
    for ex in synth_examples(task, 200, seed=digits):
        a, b = map(int, re.fullmatch(r"What is (\d+) \+ (\d+)\?", ex.prompt).groups())
        assert len(str(a)) == len(str(b)) == digits or digits == 1
        assert ex.target == str(a + b)
        assert task.check(ex, ex.reply)
        assert not task.check(ex, str(a + b + 1))
        assert not task.check(ex, "")


def test_addition_steps_writes_the_columns_out() -> None:
    """478 + 65, by hand: 8+5=13 (write 3, carry 1), 7+6+1=14 (write 4, carry 1), 4+0+1=5; the sum is 543."""

    class Fixed(AdditionSteps):
        def _operands(self, rng: random.Random) -> tuple[int, int]:
            return 478, 65

    ex = Fixed().example(random.Random(0))
    assert ex.reply == "8+5=13, write 3 carry 1. 7+6+1=14, write 4 carry 1. 4+0+1=5, write 5. Answer: 543"
    task = Fixed()
    assert task.check(ex, ex.reply)
    assert task.check(ex, "whatever I wrote. Answer: 543")
    assert not task.check(ex, "Answer: 543 and more")
    assert not task.check(ex, "543")


def test_reverse() -> None:
    task = make_task("reverse", min_length=4, max_length=4)
    for ex in synth_examples(task, 50, seed=1):
        word = re.fullmatch(r"Spell ([a-z]{4}) backwards\.", ex.prompt).group(1)
        assert ex.reply == ex.target == word[::-1]
        assert task.check(ex, f" {word[::-1]}\n")
        assert not task.check(ex, word[::-1] + "x")


def test_the_same_seed_gives_the_same_examples_and_files_round_trip(tmp_path) -> None:
    task = make_task("addition", digits=2)
    assert list(synth_examples(task, 20, 7)) == list(synth_examples(task, 20, 7))
    assert list(synth_examples(task, 20, 7)) != list(synth_examples(task, 20, 8))
    path = write_task_file(task, 20, 7, tmp_path / "add.jsonl")
    assert read_task_file(path).examples == list(synth_examples(task, 20, 7))
    assert read_task_file(path).task == "addition"


@pytest.mark.parametrize(
    ("name", "settings", "message"),
    [
        ("multiplication", {}, r"unknown task 'multiplication'; tasks are \['addition', 'addition_steps', 'reverse'\]"),
        ("addition", {"digits": 0}, r"digits must be an integer in \[1, 18\], got 0"),
        ("addition", {"digits": True}, r"digits must be an integer in \[1, 18\], got True"),
        ("reverse", {"min_length": 5, "max_length": 2}, r"max_length must be an integer in \[5, 64\], got 2"),
        # was Python's "__init__() got an unexpected keyword argument": the setting and the valid ones are named
        ("reverse", {"letters": 2}, r"^task 'reverse' has no setting 'letters'; its settings are: min_length \(default "
         r"3\), max_length \(default 6\)$"),
    ],
)
def test_bad_tasks_are_refused_by_name(name: str, settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_task(name, **settings)


def test_a_count_is_bounded() -> None:
    with pytest.raises(ValueError, match=r"n must be an integer in \[1, 10000000\], got 1000000000"):
        next(synth_examples(make_task("addition"), 1_000_000_000, 0))


def test_a_file_that_is_not_a_task_file_is_named_with_its_line(tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    good = '{"messages": [{"role": "user", "content": "hi"}], "target": "x", "task": "reverse"}\n'
    for second, message in [
        ('{"text": "plain"}', "not a task record"),
        (good.replace("reverse", "addition"), r"a second task \('addition'\); a task file holds one task"),
        (good.replace("reverse", "chess"), r"unknown task 'chess'"),
        (good.replace('"x"', "3"), r"'target', 'task' and the messages' content must be strings"),
    ]:
        path.write_text(good + second + "\n")
        with pytest.raises(ValueError, match=rf"bad.jsonl, line 2: {message}"):
            read_task_file(path)
    assert TaskExample("p", "r", "t").messages()[1] == {"role": "assistant", "content": "r"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        # was "'utf-8' codec can't decode byte 0xff in position 0", naming no file or line
        (b'\n\xff\xfe\n', r"tasks\.jsonl, line 2: not UTF-8 text; a task file is JSON lines$"),
        # 100,000 nested lists: json.loads raised RecursionError (a traceback)
        (b"[" * 100_000 + b"]" * 100_000 + b"\n", r"tasks\.jsonl, line 1: not a task record"),
    ],
)
def test_a_damaged_task_file_is_refused_by_line(tmp_path, content: bytes, message: str) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_task_file(path)
