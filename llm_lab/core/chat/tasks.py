"""Tasks with checkable answers, generated from a seed so that everything runs offline.

Each task is a small class in one registry (:data:`TASKS`, the only list of their names): it makes an example (a
user prompt, the reference assistant reply, and the target the checker compares) from a ``random.Random``, and it
checks a model's reply. Supervised fine-tuning trains on the reference replies; RL rewards a reply by its check;
evaluation reports the share of replies that pass.

==================  ==========================================  ===============================================
task                prompt -> reference reply                   checked
==================  ==========================================  ===============================================
``addition``        ``"What is 123 + 458?"`` -> ``"581"``       the reply is the sum's digits
``addition_steps``  the same -> the columns written out, then   the number after the last ``"Answer:"``
                    ``"Answer: 581"``
``reverse``         ``"Spell lamp backwards."`` -> ``"pmal"``   the reply is the word reversed
==================  ==========================================  ===============================================
"""

from __future__ import annotations

import inspect
import json
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from llm_lab.utils.io import atomic_write
from llm_lab.utils.json_input import loads_strict

__all__ = [
    "TASKS",
    "Task",
    "TaskExample",
    "TaskFile",
    "make_task",
    "task_settings",
    "read_task_file",
    "synth_examples",
    "write_task_file",
]

MAX_EXAMPLES = 10_000_000  # one value must not ask for unbounded work


@dataclass(frozen=True)
class TaskExample:
    """One generated example: the user's ``prompt``, the reference ``reply``, and the ``target`` a checker wants."""

    prompt: str
    reply: str
    target: str

    def prompt_messages(self) -> list[dict[str, str]]:
        """The conversation to reply to: the user's prompt."""
        return [{"role": "user", "content": self.prompt}]

    def messages(self) -> list[dict[str, str]]:
        """The example as a conversation (user, then the reference assistant reply), for supervised training."""
        return [*self.prompt_messages(), {"role": "assistant", "content": self.reply}]


class Task:
    """A task: ``example(rng)`` makes one, ``extract(reply)`` finds the answer in a reply, ``check`` compares it.

    Subclasses set ``name`` and ``description`` and may take settings as keyword arguments, validated in
    ``__init__`` (a ``ValueError`` that says what to change).
    """

    name: ClassVar[str]
    description: ClassVar[str]

    def example(self, rng: random.Random) -> TaskExample:
        raise NotImplementedError

    def extract(self, reply: str) -> str | None:
        """The answer a reply gives, or None if it gives none in the task's form."""
        return reply.strip() or None

    def check(self, example: TaskExample, reply: str) -> bool:
        """Whether ``reply`` answers ``example`` correctly."""
        return self.extract(reply) == example.target


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    if cls.name in TASKS:
        raise ValueError(f"task {cls.name!r} is registered twice")
    TASKS[cls.name] = cls
    return cls


def _check_range(name: str, value: object, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


@register_task
class Addition(Task):
    """Add two numbers of ``digits`` digits each; the reply is the sum."""

    name = "addition"
    description = "add two numbers of `digits` digits; the reply is the sum"

    def __init__(self, digits: int = 3) -> None:
        self.digits = _check_range("digits", digits, 1, 18)

    def _operands(self, rng: random.Random) -> tuple[int, int]:
        low = 0 if self.digits == 1 else 10 ** (self.digits - 1)
        high = 10**self.digits - 1
        return rng.randint(low, high), rng.randint(low, high)

    def example(self, rng: random.Random) -> TaskExample:
        a, b = self._operands(rng)
        return TaskExample(f"What is {a} + {b}?", str(a + b), str(a + b))

    def extract(self, reply: str) -> str | None:
        reply = reply.strip()
        return reply if re.fullmatch(r"\d+", reply) else None


@register_task
class AdditionSteps(Addition):
    """Addition with the columns written out, right to left, each with its carry, then ``Answer: <sum>``.

    Example, 478 + 65: ``"8+5=13, write 3 carry 1. 7+6+1=14, write 4 carry 1. 4+0+1=5, write 5. Answer: 543"``.
    """

    name = "addition_steps"
    description = "add two numbers of `digits` digits, columns written out, then 'Answer: <sum>'"

    def example(self, rng: random.Random) -> TaskExample:
        a, b = self._operands(rng)
        steps, carry = [], 0
        da, db = str(a)[::-1], str(b)[::-1]
        for i in range(max(len(da), len(db))):
            x, y = int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0
            total = x + y + carry
            added = f"{x}+{y}" + (f"+{carry}" if carry else "")
            carry = total // 10
            last = i == max(len(da), len(db)) - 1
            write = str(total) if last else str(total % 10)
            steps.append(f"{added}={total}, write {write}" + (f" carry {carry}" if carry and not last else ""))
        return TaskExample(f"What is {a} + {b}?", ". ".join(steps) + f". Answer: {a + b}", str(a + b))

    def extract(self, reply: str) -> str | None:
        found = re.findall(r"Answer:\s*(\d+)\s*$", reply.strip())
        return found[-1] if found else None


@register_task
class Reverse(Task):
    """Spell a word backwards; the words are random lowercase letters, ``min_length`` to ``max_length`` long."""

    name = "reverse"
    description = "spell a random lowercase word backwards"

    def __init__(self, min_length: int = 3, max_length: int = 6) -> None:
        self.min_length = _check_range("min_length", min_length, 1, 64)
        self.max_length = _check_range("max_length", max_length, self.min_length, 64)

    def example(self, rng: random.Random) -> TaskExample:
        length = rng.randint(self.min_length, self.max_length)
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(length))
        return TaskExample(f"Spell {word} backwards.", word[::-1], word[::-1])


def make_task(name: str, **settings: object) -> Task:
    """The task called ``name`` with its settings.

    Raises:
        ValueError: an unknown task (listing the known ones) or a bad setting.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks are {sorted(TASKS)}")
    known = task_settings(name)
    unknown = [key for key in settings if key not in known]
    if unknown:
        valid = ", ".join(f"{key} (default {default!r})" for key, default in known.items()) or "none"
        raise ValueError(f"task {name!r} has no setting {unknown[0]!r}; its settings are: {valid}")
    return TASKS[name](**settings)


def task_settings(name: str) -> dict[str, object]:
    """The settings task ``name`` takes, each with its default (the keyword arguments of its constructor)."""
    parameters = list(inspect.signature(TASKS[name].__init__).parameters.values())[1:]  # past self
    return {p.name: p.default for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def synth_examples(task: Task, n: int, seed: int) -> Iterator[TaskExample]:
    """``n`` examples of ``task``, the same for the same seed."""
    _check_range("n", n, 1, MAX_EXAMPLES)
    rng = random.Random(seed)
    for _ in range(n):
        yield task.example(rng)


def write_task_file(task: Task, n: int, seed: int, path: str | os.PathLike) -> Path:
    """Write ``n`` examples as JSONL (atomically): ``{"messages": [...], "target": ..., "task": ...}`` a line.

    The ``messages`` are what supervised fine-tuning reads; ``target`` and ``task`` are what a checker needs.
    """
    path = Path(path)
    with atomic_write(path, "w") as f:
        for ex in synth_examples(task, n, seed):
            record = {"messages": ex.messages(), "target": ex.target, "task": task.name}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


@dataclass(frozen=True)
class TaskFile:
    """A task file read back: the task's name (its checker) and the examples."""

    task: str
    examples: list[TaskExample]


def read_task_file(path: str | os.PathLike) -> TaskFile:
    """Read a file written by :func:`write_task_file` (the last user turn of each record is its prompt).

    Raises:
        ValueError: a line that is not such a record, or records of different tasks (naming the line).
    """
    examples, names = [], set()
    with open(path, "rb") as f:  # lines decoded one by one, so a bad byte is named by its line
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path}, line {number}: not UTF-8 text; a task file is JSON lines") from None
            if not line.strip():
                continue
            try:
                record = loads_strict(line, what=f"{path}, line {number}")  # deep nesting: a ValueError too
                messages, target, name = record["messages"], record["target"], record["task"]
                prompt = next(m["content"] for m in reversed(messages) if m["role"] == "user")
                reply = next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), "")
            except (ValueError, KeyError, TypeError, StopIteration):
                raise ValueError(
                    f"{path}, line {number}: not a task record (expected an object with 'messages' holding a user "
                    "turn, 'target' and 'task', as llm-lab data synth writes)"
                ) from None
            if not all(isinstance(v, str) for v in (target, prompt, reply, name)):
                raise ValueError(f"{path}, line {number}: 'target', 'task' and the messages' content must be strings")
            if name not in TASKS:
                raise ValueError(f"{path}, line {number}: unknown task {name!r}; tasks are {sorted(TASKS)}")
            names.add(name)
            if len(names) > 1:
                raise ValueError(f"{path}, line {number}: a second task ({name!r}); a task file holds one task")
            examples.append(TaskExample(prompt, reply, target))
    if not examples:
        raise ValueError(f"{path}: no task records")
    return TaskFile(names.pop(), examples)
