"""`llm-lab sample` and the sampling scripts: the text is exactly what `llm_lab.core.decode` generates."""

from __future__ import annotations

import importlib
import re
import runpy
from pathlib import Path

import pytest
import torch
from package_helpers import bpe_tokenizer, char_tokenizer, make_package

from llm_lab.cli import main
from llm_lab.core.decode import generate, generate_text

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bpe_package(tmp_path_factory):
    tok = bpe_tokenizer()
    path, model = make_package(tmp_path_factory.mktemp("bpe") / "pkg", tok)
    return path, tok, model


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_greedy_sample_matches_the_library(capsys, bpe_package):
    path, tok, model = bpe_package
    code, out, _ = run_cli(
        capsys, "sample", str(path), "--prompt", "to be", "--temperature", "0", "--max-new-tokens", "12"
    )
    assert code == 0
    expected = generate_text(model, tok, "to be", 12, temperature=0)
    assert out == "to be" + expected + "\n"


def test_seeded_sampling_is_reproducible_and_matches_generate(capsys, bpe_package):
    path, tok, model = bpe_package
    args = ["sample", str(path), "--prompt", "the", "--max-new-tokens", "10", "--top-k", "20", "--top-p", "0.9"]
    _, first, _ = run_cli(capsys, *args, "--seed", "1", "--num-samples", "2")
    _, again, _ = run_cli(capsys, *args, "--seed", "1", "--num-samples", "2")
    _, other, _ = run_cli(capsys, *args, "--seed", "2", "--num-samples", "2")
    assert first == again
    assert first != other
    out = generate(
        model, [tok.encode("the")] * 2, 10, top_k=20, top_p=0.9, seed=1, tokenizer=tok, eos_token_id=tok.eot_token_id
    )
    assert first == f"--- sample 1/2 ---\nthe{out.texts[0]}\n--- sample 2/2 ---\nthe{out.texts[1]}\n"


def test_stream_prints_the_same_text(capsys, bpe_package):
    path, _, _ = bpe_package
    args = ["sample", str(path), "--prompt", "to", "--max-new-tokens", "15", "--seed", "3", "--num-samples", "3"]
    _, batched, _ = run_cli(capsys, *args, "--min-p", "0.05", "--repetition-penalty", "1.2")
    _, streamed, _ = run_cli(capsys, *args, "--min-p", "0.05", "--repetition-penalty", "1.2", "--stream")
    assert streamed == batched
    assert batched.count("--- sample") == 3


def test_empty_prompt_starts_from_end_of_text(capsys, bpe_package):
    path, tok, model = bpe_package
    code, out, _ = run_cli(capsys, "sample", str(path), "--seed", "5", "--max-new-tokens", "8")
    assert code == 0
    eot = tok.eot_token_id
    expected = generate(model, [eot], 8, seed=5, tokenizer=tok, eos_token_id=eot).texts[0]
    assert expected and out == expected + "\n"


def test_stop_string(capsys, tmp_path):
    tok = char_tokenizer()  # no end-of-text token: the greedy text always has all 20 characters
    path, model = make_package(tmp_path / "char", tok)
    full = generate_text(model, tok, "to", 20, temperature=0)
    assert len(full) == 20
    stop = full[6:8]
    args = ["sample", str(path), "--prompt", "to", "--temperature", "0", "--max-new-tokens", "20", "--stop", stop]
    _, out, _ = run_cli(capsys, *args)
    assert out == "to" + full[: full.index(stop)] + "\n"


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--temperature", "-1"], "temperature must be"),
        (["--top-p", "1.5"], "top_p must be in (0, 1]"),
        (["--min-p", "2"], "min_p must be in [0, 1]"),
        (["--repetition-penalty", "0"], "repetition_penalty must be"),
    ],
)
def test_bad_flag_values(capsys, bpe_package, flags, fragment):
    path, _, _ = bpe_package
    code, out, err = run_cli(capsys, "sample", str(path), "--prompt", "x", *flags)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("llm-lab: error: ") and fragment in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--max-new-tokens", "0"], "expected a positive integer"),
        (["--top-k", "zero"], "expected a positive integer"),
        (["--num-samples", "-2"], "expected an integer from 1 to 1,024"),
    ],
)
def test_bad_flag_types_are_usage_errors(capsys, bpe_package, flags, fragment):
    path, _, _ = bpe_package
    with pytest.raises(SystemExit) as exc:
        main(["sample", str(path), *flags])
    assert exc.value.code == 2
    assert fragment in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        # torch's "Overflow when unpacking long long" named no flag; 1e24 is no integer
        (["--seed", "1e24"], "argument --seed: expected an integer from 0 to 2**63 - 1, got '1e24'"),
        (["--seed", str(2**70)], f"argument --seed: expected an integer from 0 to 2**63 - 1, got '{2**70}'"),
        (["--seed", "-1"], "argument --seed: expected an integer from 0 to 2**63 - 1, got '-1'"),
        # a billion samples grew to 16 GB before the kernel killed it
        (["--num-samples", "1000000000"], "argument --num-samples: expected an integer from 1 to 1,024 (the samples "
         "are one batch, decoded together), got 1,000,000,000"),
    ],
)
def test_seeds_and_counts_out_of_range_are_usage_errors(capsys, bpe_package, flags, fragment):
    path, _, _ = bpe_package
    with pytest.raises(SystemExit) as exc:
        main(["sample", str(path), "--prompt", "x", *flags])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.endswith(f"llm-lab sample: error: {fragment}\n")


def test_a_batch_of_samples_that_cannot_fit_is_refused_before_generating(capsys, bpe_package, monkeypatch):
    from llm_lab.core.model import memory

    path, _, _ = bpe_package
    monkeypatch.setattr(memory, "_host_memory", lambda: 2**20)  # a machine of 1 MiB: the weights alone fit no more
    code, out, err = run_cli(capsys, "sample", str(path), "--prompt", "x", "--num-samples", "1024")
    assert code == 2 and out == ""
    assert re.fullmatch(r"llm-lab: error: --num-samples 1024 x \d+ positions needs about .* but this machine has "
                        r"1\.0 MiB of memory; ask for fewer samples \(--num-samples\) or tokens \(--max-new-tokens\)\n",
                        err), err


@pytest.mark.parametrize(
    ("device", "fragment"),
    [
        ("foo", "device 'foo' is not a device name; use cpu, cuda, cuda:N or mps"),
        # No CUDA: "not available"; with CUDA, no machine has 100 GPUs: the valid range is named.
        ("cuda:99", "device 'cuda:99': " + ("this machine has" if torch.cuda.is_available() else "CUDA is not")),
        ("meta", "device 'meta': llm-lab runs models on cpu, cuda or mps"),
    ],
)
def test_bad_device_is_a_one_line_error(capsys, bpe_package, device, fragment):
    path, _, _ = bpe_package
    code, out, err = run_cli(capsys, "sample", str(path), "--prompt", "x", "--device", device)
    assert code == 2 and out == ""
    assert err.startswith(f"llm-lab: error: {fragment}") and err.count("\n") == 1, err


def test_missing_package_and_char_model_without_prompt(capsys, tmp_path):
    code, _, err = run_cli(capsys, "sample", str(tmp_path / "none"), "--prompt", "x")
    assert code == 2 and err.strip() == f"llm-lab: error: no package or run directory at {tmp_path / 'none'}"
    path, _ = make_package(tmp_path / "char", char_tokenizer())
    code, _, err = run_cli(capsys, "sample", str(path))
    assert code == 2 and "--prompt is empty and this tokenizer has no end-of-text token" in err
    code, _, err = run_cli(capsys, "sample", str(path), "--prompt", "Zebra€")
    assert code == 2 and "character 'Z' at position 0 is not in the vocabulary" in err


def script_main(name: str):
    return runpy.run_path(str(REPO / "scripts" / name), run_name="script_under_test")["main"]


def test_p2_sample_bpe_script(capsys, bpe_package):
    path, tok, model = bpe_package
    code = script_main("p2_sample_bpe.py")(
        [str(path), "--prompt", "to be", "--temperature", "0", "--max-new-tokens", "8"]
    )
    assert code == 0
    assert capsys.readouterr().out == "to be" + generate_text(model, tok, "to be", 8, temperature=0) + "\n"
    assert script_main("p2_sample_bpe.py")([str(path / "missing")]) == 2
    assert "package not found" in capsys.readouterr().err


def make_char_run(root: Path):
    """A run directory in the Trainer's layout with one checkpoint."""
    import json

    tok = char_tokenizer()
    package, model = make_package(root / "pkg", tok)
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"model": model.config.__dict__}))
    tok.save(run / "tokenizer")
    torch.save(
        {"format_version": 1, "model_config": model.config.__dict__, "model": model.state_dict(), "step": 1},
        run / "checkpoints" / "best_val.pt",
    )
    return run, tok, model


def test_p1_sample_char_script_with_run_dir_and_vocab(capsys, tmp_path):
    run, tok, model = make_char_run(tmp_path)
    expected = "to" + generate_text(model, tok, "to", 10, temperature=0) + "\n"
    main_fn = script_main("p1_sample_char.py")
    assert main_fn([str(run), "--prompt", "to", "--temperature", "0", "--max-new-tokens", "10"]) == 0
    assert capsys.readouterr().out == expected
    # A vocabulary given separately: a tokenizer directory or a bare vocab.json.
    tok.save(tmp_path / "vocab_dir")
    bare = tmp_path / "bare_vocab.json"
    bare.write_text((tmp_path / "vocab_dir" / "vocab.json").read_text())
    for vocab in (tmp_path / "vocab_dir", bare):
        assert (
            main_fn([str(run), "--vocab", str(vocab), "--prompt", "to", "--temperature", "0", "--max-new-tokens", "10"])
            == 0
        )
        assert capsys.readouterr().out == expected
    # `llm-lab sample` takes the run directory too.
    assert main(["sample", str(run), "--prompt", "to", "--temperature", "0", "--max-new-tokens", "10"]) == 0
    assert capsys.readouterr().out == expected
    assert main_fn([str(run), "--vocab", str(tmp_path / "nope.json")]) == 2
    assert "--vocab: no such file or directory" in capsys.readouterr().err


def test_tiny_temperature_is_greedy_and_tiny_penalty_is_refused(capsys, bpe_package):
    """Both used to end in torch's "probability tensor contains inf/nan" traceback."""
    path, tok, model = bpe_package
    args = ["sample", str(path), "--prompt", "to be", "--max-new-tokens", "12"]
    code, out, err = run_cli(capsys, *args, "--temperature", "1e-300", "--seed", "4")
    assert code == 0 and err == ""
    assert out == "to be" + generate_text(model, tok, "to be", 12, temperature=0) + "\n"
    code, out, err = run_cli(capsys, *args, "--repetition-penalty", "1e-300")
    assert code == 2 and out == ""
    assert err == (
        "llm-lab: error: repetition_penalty must be a number in [0.01, 100] (1 disables it; outside that range the "
        "scores overflow), got 1e-300\n"
    )


def test_nan_weights_are_a_one_line_error(capsys, tmp_path):
    tok = char_tokenizer()
    path, model = make_package(tmp_path / "pkg", tok)
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    from llm_lab.cli import build_parser
    from llm_lab.cli.sample import sample_and_print

    # The sampler's own check (package loading refuses NaN weights on its own): the model reaches the sampler here.
    for flags in ([], ["--stream"], ["--temperature", "0"]):
        args = build_parser().parse_args(["sample", str(path), "--prompt", "to", *flags])
        with pytest.raises(ValueError, match=r"the model produced non-finite logits \(NaN or inf\) for row 0"):
            sample_and_print(args, tok, model)
    capsys.readouterr()
    from llm_lab.core.package.io import save_model_package

    save_model_package(tmp_path / "nan", model.config, tok, model)
    code, out, err = run_cli(capsys, "sample", str(tmp_path / "nan"), "--prompt", "to")
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert re.match(r"llm-lab: error: .*(NaN|non-finite)", err), err


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({}, r"at most 3200 \(100 windows of its 32-token context, sliding the window past it\)"),
        ({"pos_encoding": "rope"}, r"at most 31 \(its context is 32 tokens and the prompt takes 2\)"),
    ],
)
def test_max_new_tokens_is_capped_by_the_model(capsys, tmp_path, overrides, message):
    path, _ = make_package(tmp_path / "pkg", char_tokenizer(), **overrides)
    code, out, err = run_cli(capsys, "sample", str(path), "--prompt", "to", "--max-new-tokens", "1000000000")
    assert code == 2 and out == ""
    assert re.fullmatch(r"llm-lab: error: --max-new-tokens 1000000000 is more than this model can generate: " + message
                        + "\n", err), err  # fmt: skip
    from llm_lab.cli.sample import check_max_new_tokens
    from llm_lab.core.model.gpt import MiniGPTConfig

    limit = 31 if overrides else 3200
    config = MiniGPTConfig(vocab_size=40, context_length=32, n_layer=1, n_head=1, n_embd=8, **overrides)
    check_max_new_tokens(limit, config, 2)  # the limit itself is allowed
    with pytest.raises(ValueError, match=f"--max-new-tokens {limit + 1} is more than"):
        check_max_new_tokens(limit + 1, config, 2)
    if overrides:  # a model that stops at its context really gives that many tokens
        argv = ["sample", str(path), "--prompt", "to", "--max-new-tokens", str(limit), "--temperature", "0"]
        code, out, _ = run_cli(capsys, *argv)
        assert code == 0 and len(out) == len("to") + limit + 1  # a character model: one character per token


@pytest.mark.parametrize("stream_flag", [[], ["--stream"]])
def test_ctrl_c_prints_the_text_so_far(capsys, monkeypatch, bpe_package, stream_flag):
    """Ctrl+C during generation: every sample's text so far is printed, one line on stderr, exit code 130."""
    import llm_lab.core.decode as decode

    path, tok, model = bpe_package
    real_stream = decode.stream
    steps = 5

    def interrupted_stream(*args, **kwargs):
        def run():
            for i, chunk in enumerate(real_stream(*args, **kwargs)):
                if i == 2 * steps:  # two samples: two chunks per step
                    raise KeyboardInterrupt
                yield chunk

        return run()

    monkeypatch.setattr(decode, "stream", interrupted_stream)
    argv = ["sample", str(path), "--prompt", "to", "--max-new-tokens", "50", "--num-samples", "2", "--seed", "9"]
    code, out, err = run_cli(capsys, *argv, "--stop", "@@", *stream_flag)  # a stop string: no early finish
    assert code == 130
    assert err == f"llm-lab: interrupted after {steps} new tokens; the text so far is above\n"
    full = generate(model, [tok.encode("to")] * 2, steps, seed=9, tokenizer=tok, eos_token_id=tok.eot_token_id)
    texts = [tok.decode_bytes(ids).decode("utf-8", errors="replace") for ids in full.token_ids]
    # Text held back (an incomplete UTF-8 character) may be missing at the cut, never anything else.
    heads = out.split("--- sample 2/2 ---\n")
    assert heads[0].startswith("--- sample 1/2 ---\nto") and len(heads) == 2
    for shown, want in zip(heads, texts, strict=True):
        shown = shown.removeprefix("--- sample 1/2 ---\n").removesuffix("\n")
        assert shown.startswith("to") and want.startswith(shown[2:]) and len(shown) > 2


def test_dtype_decodes_through_that_copy(capsys, bpe_package, monkeypatch):
    from llm_lab.core.decode import prepare_for_decode
    from llm_lab.core.decode.fast_linear import DecodeLinear

    path, tok, model = bpe_package
    seen = []
    real_stream = importlib.import_module("llm_lab.core.decode").stream

    def spy(decode_model, *args, **kwargs):
        seen.append({m.dtype for m in decode_model.modules() if isinstance(m, DecodeLinear)})
        return real_stream(decode_model, *args, **kwargs)

    monkeypatch.setattr("llm_lab.core.decode.stream", spy)
    code, out, _ = run_cli(
        capsys, "sample", str(path), "--prompt", "to be", "--temperature", "0", "--max-new-tokens", "8", "--dtype",
        "int8",
    )  # fmt: skip
    assert code == 0 and seen == [{"int8"}]
    expected = generate_text(prepare_for_decode(model, "int8"), tok, "to be", 8, temperature=0)
    assert out == "to be" + expected + "\n"
    code, _, err = run_cli(capsys, "sample", str(path), "--prompt", "x", "--dtype", "fp8")
    assert code == 2
    assert err.strip() == "llm-lab: error: unknown decode dtype 'fp8'; choose one of: auto, fp32, bf16, int8"
