import math

import pytest
import torch

from llm_lab.core.train import NonFiniteLossError, Trainer, load_checkpoint
from llm_lab.core.train.metrics import METRICS_COLUMNS, read_metrics

LOSS_COLUMNS = ("step", "tokens", "lr", "train_loss", "val_loss", "grad_norm")


def _losses(path):
    return [tuple(row[c] for c in LOSS_COLUMNS) for row in read_metrics(path)]


def test_loss_falls_and_the_run_directory_is_complete(tiny_model, tiny_config, char_data, tmp_path):
    train, val, vocab = char_data
    trainer = Trainer(tiny_model(vocab), tiny_config(max_steps=40, eval_interval=20), train, val, out_dir=tmp_path)
    first = trainer.evaluate().loss
    result = trainer.train()
    assert result.step == 40 and result.tokens_seen == 40 * 8 * 16
    assert result.val_loss < first - 0.5  # from ~log(vocab) towards the text's statistics
    rows = read_metrics(tmp_path / "metrics.csv")
    assert tuple(rows[0]) == METRICS_COLUMNS
    assert [int(r["step"]) for r in rows] == list(range(1, 41))
    assert [r["step"] for r in rows if r["val_loss"]] == ["20", "40"]
    best = load_checkpoint(tmp_path / "checkpoints" / "best_val.pt", training_state=True)
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt", training_state=True)
    assert last["step"] == 40 and last["best_val_loss"] == result.best_val_loss == min(
        float(r["val_loss"]) for r in rows if r["val_loss"]
    )
    assert best["step"] in (20, 40)
    # Saved from the plain module: keys carry no wrapper prefixes.
    assert set(last["model"]) == set(trainer.model.state_dict())


def test_mfu_is_flops_per_token_times_tokens_per_second_over_peak(tiny_model, tiny_config, char_data):
    train, val, vocab = char_data
    model = tiny_model(vocab)
    trainer = Trainer(model, tiny_config(max_steps=2, peak_flops=2e9), train, val)
    row = trainer.train().history[-1]
    assert row["mfu"] == pytest.approx(model.flops_per_token() * row["tokens_per_second"] / 2e9)


@pytest.mark.parametrize("progress", [True, None, False])
def test_progress_bar_shows_loss_and_tokens_per_second(tiny_model, tiny_config, char_data, capsys, progress):
    """progress=True draws a bar with loss and tok/s; without a terminal (None) or with False there is no bar.

    Without a bar, None prints each logged row instead (so a log file still shows progress); False is silent.
    """
    train, val, vocab = char_data
    Trainer(tiny_model(vocab), tiny_config(max_steps=3, eval_interval=3), train, val, progress=progress).train()
    out, err = capsys.readouterr()
    if progress:
        assert "3/3" in err and "loss=" in err and "tok_s=" in err
    else:
        assert "tok_s=" not in err
    assert ("step 3/3 | loss " in out) == (progress is None)


def test_evaluation_is_deterministic_and_reports_perplexity(tiny_model, tiny_config, char_data):
    train, val, vocab = char_data
    trainer = Trainer(tiny_model(vocab), tiny_config(), train, val)
    a, b = trainer.evaluate(), trainer.evaluate()
    assert a == b and a.perplexity == pytest.approx(math.exp(a.loss))
    assert a.loss == pytest.approx(math.log(vocab), rel=0.1)  # an untrained model is close to uniform


def test_a_failed_evaluation_leaves_the_model_in_training_mode(tiny_model, tiny_config, char_data, monkeypatch):
    train, val, vocab = char_data
    trainer = Trainer(tiny_model(vocab, dropout=0.1), tiny_config(), train, val)

    def broken(*args, **kwargs):
        raise RuntimeError("disk gone")

    monkeypatch.setattr(val, "eval_batches", broken)
    with pytest.raises(RuntimeError, match="disk gone"):
        trainer.evaluate()
    assert trainer.model.training  # dropout stays on for the training that follows


class _Killed(BaseException):
    """Stands in for a kill: raised from a sample callback, after the step's CSV row is written."""


OPTIMIZER_SCHEDULES = [
    {"optimizer": "adamw", "schedule": "cosine"},
    {"optimizer": "muon", "schedule": "wsd", "muon_momentum_warmup_steps": 10, "decay_fraction": 0.5},
    {"optimizer": "muon", "schedule": "linear", "min_lr": 0.0},
]


def test_every_optimizer_and_schedule_is_in_the_resume_matrix():
    """A new entry of ``OPTIMIZERS`` or ``SCHEDULES`` must be given a row above (its settings for a short run)."""
    from llm_lab.core.train.optim import OPTIMIZERS
    from llm_lab.core.train.schedule import SCHEDULES

    assert {row["optimizer"] for row in OPTIMIZER_SCHEDULES} == set(OPTIMIZERS)
    assert {row["schedule"] for row in OPTIMIZER_SCHEDULES} == set(SCHEDULES)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
@pytest.mark.parametrize("opt", OPTIMIZER_SCHEDULES, ids=lambda o: f"{o['optimizer']}-{o['schedule']}")
def test_resume_from_a_checkpoint_gives_bitwise_the_same_losses(
    tiny_model, tiny_config, char_data, tmp_path, dropout, opt
):
    """12 steps straight vs a run stopped after step 10 and resumed from last.pt (step 8) to step 12, for each
    optimizer and schedule (Muon's momentum buffers and AdamW's moments both live in the checkpoint)."""
    train, val, vocab = char_data
    cfg = tiny_config(max_steps=12, grad_accum_steps=2, eval_interval=4, sample_interval=10, **opt)
    straight = Trainer(tiny_model(vocab, dropout=dropout), cfg, train, val, out_dir=tmp_path / "a")
    straight.train()

    def kill(model, step):
        raise _Killed

    run = tmp_path / "b"
    with pytest.raises(_Killed):
        Trainer(tiny_model(vocab, dropout=dropout), cfg, train, val, out_dir=run, sample_callbacks=[kill]).train()
    assert [r["step"] for r in read_metrics(run / "metrics.csv")][-1] == "10"  # rows 9 and 10 outlived last.pt
    resumed = Trainer(tiny_model(vocab, seed=99, dropout=dropout), cfg, train, val, out_dir=run)
    resumed.resume(run)
    assert resumed.step == 8
    resumed.train()
    assert _losses(run / "metrics.csv") == _losses(tmp_path / "a" / "metrics.csv")
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_gradient_accumulation_matches_one_big_batch(tiny_model, tiny_config, char_data):
    """4 x 2 micro-batches and 1 x 8 see the same 8 windows: the update is the same (up to float rounding)."""
    train, val, vocab = char_data
    windows = train.get_batch(8, torch.Generator().manual_seed(5))

    class Fixed:
        context_length = train.context_length

        def __init__(self, parts):
            self.parts, self.i = parts, 0

        def get_batch(self, batch_size, generator, device=None):
            x, y = self.parts[self.i]
            self.i += 1
            return x, y

    split = [(windows[0][:4], windows[1][:4]), (windows[0][4:], windows[1][4:])]
    a = Trainer(tiny_model(vocab), tiny_config(max_steps=1, batch_size=4, grad_accum_steps=2), Fixed(split), val)
    b = Trainer(tiny_model(vocab), tiny_config(max_steps=1, batch_size=8), Fixed([windows]), val)
    ra, rb = a.train(), b.train()
    assert ra.train_loss == pytest.approx(rb.train_loss, abs=1e-6)
    for (name, pa), pb in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    tiny_model, tiny_config, char_data, tmp_path
):
    train, val, vocab = char_data
    model = tiny_model(vocab)
    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += module.training  # evaluation forwards do not count
        if module.training and calls["n"] == 7:  # the forward of step 7
            return output * float("nan")
        return output

    trainer = Trainer(model, tiny_config(max_steps=12, eval_interval=4), train, val, out_dir=tmp_path)
    model.lm_head.register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError, match=r"the training loss became nan at step 7$"):
        trainer.train()
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt", training_state=True)
    assert ckpt["step"] == 4
    assert all(math.isfinite(v.float().sum()) for v in ckpt["model"].values())


def test_sample_callbacks_are_logged_and_do_not_shift_training(tiny_model, tiny_config, char_data, tmp_path, capsys):
    train, val, vocab = char_data
    seen = []

    def callback(model, step):
        seen.append((step, model.training))
        torch.rand(100)  # consumes the global RNG: the trainer must restore it
        return f"sample text {step}"

    cfg = tiny_config(max_steps=6, sample_interval=3)
    with_cb = Trainer(
        tiny_model(vocab, dropout=0.1), cfg, train, val, out_dir=tmp_path / "a", sample_callbacks=[callback]
    ).train()
    without = Trainer(tiny_model(vocab, dropout=0.1), cfg, train, val).train()
    assert seen == [(3, False), (6, False)]
    assert [r["train_loss"] for r in with_cb.history] == [r["train_loss"] for r in without.history]
    assert "sample text 6" in capsys.readouterr().out
    assert "=== step 3 ===\nsample text 3" in (tmp_path / "a" / "samples.txt").read_text()


def test_bf16_autocast_trains_on_cpu(tiny_model, tiny_config, char_data):
    train, val, vocab = char_data
    fp32 = Trainer(tiny_model(vocab), tiny_config(max_steps=8), train, val).train()
    bf16 = Trainer(tiny_model(vocab), tiny_config(max_steps=8, precision="bf16"), train, val).train()
    assert math.isfinite(bf16.val_loss)
    assert bf16.val_loss == pytest.approx(fp32.val_loss, abs=0.05)
    assert bf16.val_loss != fp32.val_loss  # it really ran in another precision


def test_no_validation_data_still_writes_a_final_checkpoint(tiny_model, tiny_config, char_data, tmp_path):
    train, _, vocab = char_data
    trainer = Trainer(tiny_model(vocab), tiny_config(max_steps=3), train, None, out_dir=tmp_path)
    assert trainer.train().val_loss is None
    assert load_checkpoint(tmp_path)["step"] == 3
    with pytest.raises(ValueError, match="no validation data"):
        trainer.evaluate()


@pytest.mark.parametrize("threads", [1, 2])
def test_train_threads_are_applied_and_the_runtime_is_recorded(tiny_model, tiny_config, char_data, tmp_path, threads):
    """``train.threads`` sets torch's threads for the run; runtime.json records what the run resolved ``auto``s to."""
    import json

    train, val, vocab = char_data
    config = tiny_config(max_steps=1, eval_interval=1, precision="auto", threads=threads)
    trainer = Trainer(tiny_model(vocab), config, train, val, out_dir=tmp_path)
    assert torch.get_num_threads() == threads
    trainer.train()
    runtime = json.loads((tmp_path / "runtime.json").read_text())
    assert runtime == {"device": "cpu", "precision": trainer.precision, "threads": threads}
    assert trainer.precision in ("fp32", "bf16")  # resolved, never "auto"


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_sigterm_finishes_the_step_checkpoints_it_and_resume_gives_bitwise_the_same_losses(
    tiny_model, tiny_config, char_data, tmp_path, dropout
):
    """A real SIGTERM to this process during step 6 (from a sample callback; steps 4 and 8 are checkpoints): the
    trainer finishes step 6, writes last.pt at step 6 and raises Stopped; resuming from it matches the straight run
    bitwise, as resuming after Ctrl+C or a kill does from the last checkpoint."""
    import os
    import signal

    from llm_lab.utils.signals import Stopped

    train, val, vocab = char_data
    cfg = tiny_config(max_steps=12, grad_accum_steps=2, eval_interval=4, sample_interval=3)
    nothing = lambda model, step: ""  # noqa: E731 (the same callbacks in both runs)
    straight = Trainer(tiny_model(vocab, dropout=dropout), cfg, train, val, out_dir=tmp_path / "a",
                       sample_callbacks=[nothing])  # fmt: skip
    straight.train()

    def preempt(model, step):
        if step == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return ""

    run = tmp_path / "b"
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped, match=rf"^stopped by SIGTERM after step 6/12: checkpoint {run}/checkpoints/last\.pt "
                       rf"written; resume the run to continue") as info:  # fmt: skip
        Trainer(tiny_model(vocab, dropout=dropout), cfg, train, val, out_dir=run, sample_callbacks=[preempt]).train()
    assert info.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) == handler  # the handler in place before train() is back
    assert load_checkpoint(run)["step"] == 6
    resumed = Trainer(tiny_model(vocab, seed=99, dropout=dropout), cfg, train, val, out_dir=run,
                      sample_callbacks=[nothing])  # fmt: skip
    resumed.resume(run)
    assert resumed.step == 6
    resumed.train()
    assert _losses(run / "metrics.csv") == _losses(tmp_path / "a" / "metrics.csv")
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


@pytest.mark.parametrize("with_validation", [True, False])
def test_a_run_built_beside_its_folder_is_swapped_in_at_its_first_checkpoint_with_all_its_rows(
    tiny_model, tiny_config, char_data, tmp_path, with_validation
):
    """The path of every new or replacing run of `llm-lab train`: metrics.csv is written where the run ends up,
    with every row (those logged before the swap too), and nothing is left beside it."""
    from llm_lab.utils.dirswap import PendingReplacement

    train, val, vocab = char_data
    cfg = tiny_config(max_steps=6, eval_interval=4)
    straight = Trainer(tiny_model(vocab), cfg, train, val if with_validation else None, out_dir=tmp_path / "a")
    straight.train()
    trainer = Trainer(tiny_model(vocab), cfg, train, val if with_validation else None)
    trainer.replace_on_first_checkpoint(PendingReplacement(tmp_path / "b"))
    assert not (tmp_path / "b").exists()
    trainer.train()
    assert trainer.out_dir == tmp_path / "b"
    assert _losses(tmp_path / "b" / "metrics.csv") == _losses(tmp_path / "a" / "metrics.csv")
    assert [r["step"] for r in read_metrics(tmp_path / "b" / "metrics.csv")] == [str(s) for s in range(1, 7)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
