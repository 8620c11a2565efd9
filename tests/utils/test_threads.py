"""Choosing torch's CPU threads (llm_lab/utils/threads.py), with made-up /proc readings."""

from __future__ import annotations

import warnings

import pytest
import torch

from llm_lab.utils import threads as threads_module
from llm_lab.utils.threads import (
    MIN_IDLE_FRACTION,
    THREADS_ENV,
    apply_threads,
    auto_threads,
    default_threads,
    idle_cores,
    measure_idle_cores,
    parse_proc_stat,
    parse_threads,
    physical_cores,
    resolve_threads,
    settle_threads,
)


def proc_stat(*cpus: tuple[int, int]) -> str:
    """A /proc/stat text: one ``cpuN`` line per (busy ticks, idle ticks), iowait 0, plus the noise around it."""
    total_busy, total_idle = sum(b for b, _ in cpus), sum(i for _, i in cpus)
    lines = [f"cpu  {total_busy} 0 0 {total_idle} 0 0 0 0 0 0"]
    lines += [f"cpu{n} {busy} 0 0 {idle} 0 0 0 0 0 0" for n, (busy, idle) in enumerate(cpus)]
    lines += ["intr 12345 0 1", "ctxt 999", "procs_running 3"]
    return "\n".join(lines) + "\n"


def test_parse_proc_stat_counts_idle_and_iowait_as_idle():
    text = "cpu  9 9 9 9\ncpu0 10 1 2 100 5 0 3 0 7 0\ncpu1 1 2 3\ncpuX 1 2 3 4\nsoftirq 1 2\n"
    # idle = idle + iowait = 105; total = user..steal = 10+1+2+100+5+0+3+0 (guest 7 is inside user already)
    assert parse_proc_stat(text) == {0: (105, 121)}


def test_one_spinning_process_leaves_one_idle_core_even_when_it_moves_between_cpus():
    before = parse_proc_stat(proc_stat((1000, 1000), (1000, 1000)))
    # 10 ticks per CPU; the busy process ran half the window on each CPU: 5 busy + 5 idle on both.
    after = parse_proc_stat(proc_stat((1005, 1005), (1005, 1005)))
    assert idle_cores(before, after, [0, 1]) == pytest.approx(1.0)
    pinned = parse_proc_stat(proc_stat((1010, 1000), (1000, 1010)))  # the same load pinned to cpu0
    assert idle_cores(before, pinned, [0, 1]) == pytest.approx(1.0)
    assert idle_cores(before, pinned, [1]) == pytest.approx(1.0)  # only cpu1 is ours
    assert idle_cores(before, pinned, [0]) == pytest.approx(0.0)
    # no ticks seen, or a CPU missing from the readings: nothing was seen running there
    assert idle_cores(before, before, [0, 1]) == 2.0
    assert idle_cores(before, after, [0, 1, 7]) == pytest.approx(2.0)


def test_measure_idle_cores_reads_twice_around_one_sleep():
    readings = iter([proc_stat((0, 0), (0, 0)), proc_stat((10, 0), (2, 8))])
    slept: list[float] = []
    idle = measure_idle_cores([0, 1], seconds=0.25, read_stat=lambda: next(readings), sleep=slept.append)
    assert idle == pytest.approx(0.8) and slept == [0.25]


def test_measure_idle_cores_is_none_without_proc_stat():
    def missing() -> str:
        raise FileNotFoundError("/proc/stat")

    assert measure_idle_cores([0], read_stat=missing, sleep=lambda s: None) is None
    assert measure_idle_cores([0], read_stat=lambda: "", sleep=lambda s: None) is None


@pytest.mark.parametrize(
    ("idle", "max_threads", "expected"),
    [
        (2.0, 2, 2),  # idle 2-core machine: both cores
        (1.7, 2, 2),  # a little background activity still leaves two usable cores
        (1.0, 2, 1),  # another process spinning on one core: one thread
        (1.0 + MIN_IDLE_FRACTION - 0.01, 2, 1),  # the second core is not free enough
        (1.0 + MIN_IDLE_FRACTION, 2, 2),
        (0.0, 2, 1),  # everything busy: still one thread
        (16.0, 8, 8),  # never more than the physical cores
        (None, 4, 4),  # unknown (no /proc/stat): torch's own choice
    ],
)
def test_auto_threads(idle, max_threads, expected):
    assert auto_threads(idle, max_threads) == expected


def test_auto_threads_needs_a_positive_cap():
    with pytest.raises(ValueError, match="max_threads must be at least 1, got 0"):
        auto_threads(1.0, 0)


CPUINFO = "\n\n".join(
    f"processor\t: {n}\nphysical id\t: 0\ncore id\t\t: {n % 2}\nflags\t\t: fpu" for n in range(4)
)  # two cores with two hyperthreads each


def test_physical_cores_counts_cores_not_hyperthreads():
    assert physical_cores(CPUINFO, range(4)) == 2
    assert physical_cores(CPUINFO, [0, 2]) == 1  # both hyperthreads of core 0
    assert physical_cores("processor\t: 0\nflags\t: fpu\n", [0]) is None  # no topology given


@pytest.mark.parametrize(("text", "expected"), [("auto", "auto"), (" AUTO ", "auto"), ("3", 3), (2, 2)])
def test_parse_threads(text, expected):
    assert parse_threads(text) == expected


@pytest.mark.parametrize("bad", ["0", "-1", "two", "", 0, True, 1.5])
def test_parse_threads_refuses_everything_else(bad):
    with pytest.raises(ValueError, match=r"threads must be 'auto' or a positive integer, got"):
        parse_threads(bad)


def test_resolve_threads_measures_only_for_auto(monkeypatch):
    def never() -> float:
        raise AssertionError("a fixed count must not measure")

    monkeypatch.setattr("llm_lab.utils.threads.usable_cpus", lambda: [0, 1, 2, 3])
    assert resolve_threads(3, measure=never) == 3
    assert resolve_threads("auto", measure=lambda: 1.02, max_threads=2) == 1
    assert resolve_threads("auto", measure=lambda: 1.98, max_threads=2) == 2


def test_apply_threads_sets_torch():
    before = torch.get_num_threads()
    try:
        assert apply_threads(1) == 1 and torch.get_num_threads() == 1
        assert apply_threads("auto", measure=lambda: 0.0, max_threads=4) == 1
        assert apply_threads("auto", measure=lambda: 2.0, max_threads=2) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def fresh_process(monkeypatch: pytest.MonkeyPatch):
    """As in a new process: nothing settled the threads yet, no thread variables; torch's count restored after."""
    monkeypatch.setattr(threads_module, "_settled", False)
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({}, "auto"), ({THREADS_ENV: "3"}, 3), ({THREADS_ENV: "auto", "OMP_NUM_THREADS": "1"}, "auto"),
     ({"OMP_NUM_THREADS": "1"}, None)],
)  # fmt: skip
def test_default_threads_is_the_command_lines_rule(environ, expected):
    assert default_threads(environ) == expected


def test_auto_is_settled_once_per_process(fresh_process):
    measured = []

    def measure(value):
        return lambda: measured.append(value) or value

    assert settle_threads("auto", measure=measure(0.5), max_threads=2) == 1  # one core free: one thread
    assert torch.get_num_threads() == 1
    assert settle_threads("auto", measure=measure(2.0), max_threads=2) == 1  # kept, not measured again
    assert measured == [0.5]
    assert settle_threads(2) == 2 and torch.get_num_threads() == 2  # a number is applied
    assert settle_threads("auto", measure=measure(0.0), max_threads=2) == 2  # and kept by a later auto
    assert measured == [0.5]


def test_none_keeps_the_process_setting(fresh_process):
    torch.set_num_threads(1)
    assert settle_threads(None) == 1
    assert threads_module._settled is False  # a later auto still applies the rule


def test_the_command_lines_choice_is_kept_by_the_library(fresh_process):
    apply_threads(1)  # what `llm-lab --threads 1` does before the command
    assert settle_threads("auto", measure=lambda: 2.0, max_threads=2) == 1


def test_auto_follows_the_environment(fresh_process):
    assert settle_threads("auto", environ={"OMP_NUM_THREADS": "2"}, measure=lambda: 0.0) == 2  # torchrun: left
    threads_module._settled = False
    assert settle_threads("auto", environ={THREADS_ENV: "1"}) == 1


def test_settle_refuses_a_bad_setting(fresh_process):
    with pytest.raises(ValueError, match=r"threads must be 'auto' or a positive integer, got 0"):
        settle_threads(0)


def _train(threads):
    from llm_lab.core.data import LanguageModelingDataset
    from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
    from llm_lab.core.train import Trainer, TrainerConfig

    model = MiniGPT(MiniGPTConfig(vocab_size=11, context_length=8, n_layer=1, n_head=1, n_embd=8))
    kwargs = {} if threads == "default" else {"threads": threads}
    config = TrainerConfig(batch_size=2, max_steps=1, warmup_steps=0, device="cpu", precision="fp32",
                           peak_flops=1e12, **kwargs)  # fmt: skip
    Trainer(model, config, LanguageModelingDataset(list(range(11)) * 4, 8), progress=False)


def _generate(threads):
    from llm_lab.core.decode import generate
    from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig

    model = MiniGPT(MiniGPTConfig(vocab_size=11, context_length=8, n_layer=1, n_head=1, n_embd=8))
    generate(model, [1, 2], 2, temperature=0, **({} if threads == "default" else {"threads": threads}))


def _evaluate(threads):
    from llm_lab.core.evaluation import evaluate_text
    from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
    from llm_lab.core.tokenization import CharTokenizer

    tokenizer = CharTokenizer.from_text("abcdefg hij")
    model = MiniGPT(MiniGPTConfig(vocab_size=tokenizer.vocab_size, context_length=8, n_layer=1, n_head=1, n_embd=8))
    evaluate_text(model, tokenizer, "abc def ghij", **({} if threads == "default" else {"threads": threads}))


@pytest.mark.parametrize("entry_point", [_train, _generate, _evaluate], ids=["Trainer", "generate", "evaluate_text"])
def test_library_entry_points_follow_the_rule(entry_point, fresh_process, monkeypatch):
    """The default is auto (here: LLM_LAB_THREADS=1 stands for it), None keeps the process's 2 threads."""
    monkeypatch.setenv(THREADS_ENV, "1")
    entry_point(None)
    assert torch.get_num_threads() == 2 and threads_module._settled is False
    entry_point("default")
    assert torch.get_num_threads() == 1


def test_more_threads_than_cpus_are_capped_with_one_warning(monkeypatch):
    """``--threads 1000`` on a 2-core machine ran 240x slower without a word: capped to the usable CPUs, said once."""
    import llm_lab.utils.threads as threads

    monkeypatch.setattr(threads, "usable_cpus", lambda: [0, 1, 2])
    threads._warn_capped.cache_clear()
    with pytest.warns(UserWarning, match=r"^threads=1000 is more than the 3 CPUs this process may use; using 3$"):
        assert resolve_threads(1000) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_threads(1000) == 3  # said once per process: the CLI and the trainer both apply it
        assert resolve_threads(3) == 3 and resolve_threads(2) == 2
