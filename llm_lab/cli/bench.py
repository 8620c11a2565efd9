"""``llm-lab bench env|attention|step|threads|generate|llama-cpp|serve|tokenizer|data|time-to-loss|eval``: the
machine check and the benchmarks (parsing only; the library is ``llm_lab.experiments``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from llm_lab.cli.sample import bounded_int
from llm_lab.utils.errors import CLIError
from llm_lab.utils.outputs import check_output_directory, check_output_file, output_directory, write_output_json

DEFAULT_BENCH_DIR = Path("experiments") / "bench"
REPO_ROOT = Path(__file__).resolve().parents[2]  # where the default corpus is looked for (default_corpus_path)
# The output rule (llm_lab.utils.outputs), in every benchmark's --help.
_OUT_HELP = "output directory: new, empty, or one this command wrote (replaced whole); never a folder of yours"
_JSON_HELP = "(replaces only a JSON file llm-lab wrote)"


# Caps on the counts a benchmark takes (docs/how-to/checks-and-limits.md): one value must not ask for unbounded time
# or memory (``bench generate --repeats 100000000000`` ran until killed). Medians settle within a few dozen repeats.
MAX_REPEATS = 1000
_REPEATS = bounded_int(MAX_REPEATS, "a median settles within a few dozen")
_WARMUP = bounded_int(MAX_REPEATS, "a few untimed steps are enough", low=0)
_STEPS = bounded_int(10_000, "timed steps; a median settles within a few dozen")
_BATCH = bounded_int(1024, "sequences per batch")
_TOKENS = bounded_int(65_536, "tokens per sequence")
_VOCAB = bounded_int(1_048_576, "vocabulary entries")
_BPE_VOCAB = bounded_int(1_048_576, "a BPE vocabulary starts from the 256 bytes", low=257)
_CLIENTS = bounded_int(256, "concurrent clients")
_HEAD_DIM = bounded_int(1024, "channels per head")

_MEGABYTES = 100_000.0  # 100 GB of text: generated or read, tokenized and written by a benchmark


def _int_list(high: int, why: str) -> Callable[[str], tuple[int, ...]]:
    """argparse type: comma-separated integers, each from 1 to ``high``."""
    one = bounded_int(high, why)

    def int_list(text: str) -> tuple[int, ...]:
        try:
            return tuple(one(part) for part in text.split(","))
        except argparse.ArgumentTypeError as e:
            message = f"expected comma-separated integers such as 1,8; in {text!r}, {e}"
            raise argparse.ArgumentTypeError(message) from None

    return int_list


def _megabytes(*, zero: bool = False) -> Callable[[str], float]:
    """argparse type: a size in MB, above 0 (or 0 when ``zero``) and at most :data:`_MEGABYTES`."""

    def megabytes(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of MB, got {text!r}") from None
        if not (value >= 0 if zero else value > 0) or value > _MEGABYTES:
            low = "from 0" if zero else "above 0"
            raise argparse.ArgumentTypeError(f"expected a number of MB {low} and at most {_MEGABYTES:,.0f}, got {text}")
        return value

    return megabytes


_BATCH_LIST = _int_list(1024, "sequences per batch")


def _check_outputs(*, json_file: Path | None = None, folder: Path | None = None) -> None:
    """Refuse a --json file or an --out folder that is not llm-lab's before measuring anything
    (:mod:`llm_lab.utils.outputs`: a result replaces only an earlier result of llm-lab's, atomically)."""
    if json_file is not None:
        check_output_file(json_file, "--json")
    if folder is not None:
        check_output_directory(folder, "--out")


def _check_device(device: str | None) -> None:
    """A bad ``--device`` is a one-line error before any measurement (torch's own errors are tracebacks)."""
    from llm_lab.utils.devices import resolve_device

    resolve_device(device)


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="machine check and benchmarks (env, attention, step, threads, generate, serve, tokenizer, data, "
        "time-to-loss, eval)",
    )
    commands = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)

    env = commands.add_parser("env", help="devices, working dtypes, bf16 matrix units, torch.compile, matmul peak")
    env.add_argument("--device", default=None, help="device to probe (default: cuda > mps > cpu)")
    env.add_argument("--no-compile", action="store_true", help="skip the torch.compile check (slow on CPUs)")
    env.add_argument("--no-peak", action="store_true", help="skip measuring the matmul peaks")
    env.add_argument("--json", type=Path, default=None, help="also write the report as JSON to this file " + _JSON_HELP)
    env.set_defaults(func=_run_env)

    attention = commands.add_parser(
        "attention", help="reference attention vs scaled_dot_product_attention and chunked: time and peak memory"
    )
    attention.add_argument("--out", type=Path, default=DEFAULT_BENCH_DIR / "attention", help=_OUT_HELP)
    attention.add_argument("--seq-lens", type=_TOKENS, nargs="+", default=None, help="default: 128 256 512 1024")
    attention.add_argument("--head-dims", type=_HEAD_DIM, nargs="+", default=None, help="default: 32 64")
    attention.add_argument("--dtypes", nargs="+", default=None, help="float32 bfloat16 float16 (default: fp32 bf16)")
    attention.add_argument("--modes", nargs="+", default=None, help="fwd fwd_bwd (default: both)")
    attention.add_argument("--backends", nargs="+", default=None, help="default: every backend available here")
    attention.add_argument("--batch-size", type=_BATCH, default=None, help="default: 4")
    attention.add_argument("--n-head", type=bounded_int(256, "heads"), default=None, help="default: 6")
    attention.add_argument("--device", default="cpu")
    attention.add_argument("--repeats", type=_REPEATS, default=None, help="timed trials per case (median reported)")
    attention.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    attention.add_argument("--quick", action="store_true", help="a tiny setting that runs in seconds")
    attention.set_defaults(func=_run_attention)

    step = commands.add_parser(
        "step", help="one training step: ms/step, tokens/s, MFU; fp32/bf16, eager/compile, vs a plain baseline"
    )
    step.add_argument("--config", type=Path, default=None, help="run config JSON (default: the 10M char model)")
    step.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                      help="override model.* or train.batch_size, e.g. --set model.n_layer=4 (repeatable)")
    step.add_argument("--batch-size", type=_BATCH, default=None, help="default: the config's, else 16")
    step.add_argument("--device", default="cpu")
    step.add_argument("--precisions", nargs="+", default=None, help="fp32 bf16 (default: both where they work)")
    step.add_argument("--optimizers", nargs="+", default=None, help="adamw muon (default: adamw)")
    step.add_argument("--no-compile", action="store_true", help="eager only")
    step.add_argument("--no-baseline", action="store_true", help="skip the plain fp32 eager baseline")
    step.add_argument("--sft", action="store_true",
                      help="also time each of our settings on SFT batches of the same shape (the loss mask's cost)")
    step.add_argument("--rounds", type=_REPEATS, default=None, help="interleaved timing rounds (default 3)")
    step.add_argument("--steps", type=_STEPS, default=None, help="timed steps per setting (median reported)")
    step.add_argument("--warmup", type=_WARMUP, default=None, help="untimed steps first (compile happens here)")
    step.add_argument("--out", type=Path, default=DEFAULT_BENCH_DIR / "step", help=_OUT_HELP)
    step.add_argument("--quick", action="store_true", help="a tiny model and few steps: runs in seconds")
    step.set_defaults(func=_run_step)

    threads = commands.add_parser(
        "threads", help="--threads auto vs 1 and 2 threads: training and decoding, idle and next to a busy loop"
    )
    threads.add_argument("--quick", action="store_true", help="fewer steps and tokens: a minute or two on 2 cores")
    threads.add_argument("--repeats", type=_REPEATS, default=None, help="timed rounds per setting (median reported)")
    threads.add_argument("--conditions", nargs="+", default=None, choices=("idle", "busy"),
                         help="default: idle busy (busy starts a spinning background process and stops it)")
    threads.add_argument("--out", type=Path, default=DEFAULT_BENCH_DIR / "threads", help=_OUT_HELP)
    threads.set_defaults(func=_run_threads)

    gen = commands.add_parser(
        "generate", help="KV-cached generate vs Hugging Face generate on the same converted weights (tokens/s)"
    )
    gen.add_argument("--quick", action="store_true", help="tiny model and few tokens (a smoke test)")
    gen.add_argument("--repeats", type=_REPEATS, help="timed runs per measurement (median reported)")
    gen.add_argument("--new-tokens", type=_TOKENS, help="new tokens per throughput run (default 256)")
    gen.add_argument("--batch-sizes", type=_BATCH_LIST, help="comma-separated batch sizes (default 1,8)")
    gen.add_argument("--contexts", type=_int_list(65_536, "tokens per prompt"),
                     help="comma-separated prompt lengths for per-token time "
                     "(default 64,1024)")  # fmt: skip
    gen.add_argument("--vocab-size", type=_VOCAB, help="vocabulary size (default 50257, GPT-2's)")
    gen.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    gen.add_argument("--dtype", help="weights ours decodes with: fp32 (default), bf16, int8 or auto; HF stays fp32")
    gen.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file " + _JSON_HELP)
    gen.set_defaults(func=_run_generate)

    serve = commands.add_parser(
        "serve",
        help="aggregate tokens/s of many concurrent clients of llm-lab serve vs one, and time to first token",
        description="Start llm-lab serve on a random 6 x 384 character model (a subprocess) and stream greedy "
        "completions from 1 client and from --clients clients at once, alternating rounds; a --max-batch 1 server "
        "takes the same loads as the baseline. Prints a markdown table and writes serve.csv and serve.md.",
    )
    serve.add_argument("--quick", action="store_true", help="tiny model and few tokens (a smoke test, seconds)")
    serve.add_argument("--clients", type=_CLIENTS, default=None, help="concurrent clients (default 8)")
    serve.add_argument("--requests", type=_REPEATS, default=None, help="requests per client per round (default 3)")
    serve.add_argument("--new-tokens", type=_TOKENS, default=None, help="tokens per completion (default 64)")
    serve.add_argument("--max-batch", type=_BATCH, default=None, help="--max-batch of the batching server (default 8)")
    serve.add_argument("--rounds", type=_REPEATS, default=None, help="alternating rounds, medians reported (default 3)")
    serve.add_argument("--dtype", default=None, help="--dtype of both servers: fp32 (default), bf16, int8 or auto")
    serve.add_argument("--out", type=Path, default=DEFAULT_BENCH_DIR / "serve", help=_OUT_HELP)
    serve.set_defaults(func=_run_serve)

    llama = commands.add_parser(
        "llama-cpp",
        help="llama.cpp's greedy tokens on our f32 GGUF exports against ours (needs llama-cpp-python elsewhere)",
        description="Export a small random model of each llama.cpp family to GGUF (f32), decode greedily with ours "
        "and with llama.cpp (run by --llama-python, an environment with llama-cpp-python: make llama-cpp-check "
        "builds one), and compare the prompt's tokenization and the tokens. Exit code 1 when they differ.",
    )
    llama.add_argument("--llama-python", required=True, metavar="PYTHON", help="a Python that can import llama_cpp")
    llama.add_argument("--new-tokens", type=_TOKENS, default=24, help="greedy tokens to compare (default 24)")
    llama.set_defaults(func=_run_llama_cpp)

    tok = commands.add_parser(
        "tokenizer", help="our byte-level BPE vs HF tokenizers (training) and tiktoken (encoding, same ranks)"
    )
    tok.add_argument("--data", type=Path, default=None,
                     help="UTF-8 text file (default: tiny Shakespeare, your data/ first: see default_corpus_path)")
    tok.add_argument("--vocab-sizes", type=_BPE_VOCAB, nargs="+", default=[1024, 4096])
    tok.add_argument("--repeats", type=_REPEATS, default=5, help="runs per measurement; the median is reported")
    tok.add_argument("--json", type=Path, default=None, help="also write the rows as JSON to this file " + _JSON_HELP)
    tok.set_defaults(func=_run_tokenizer)

    data = commands.add_parser(
        "data", help="data prepare MB/s and peak memory vs one-thread tiktoken; tokenizer training vs HF tokenizers"
    )
    data.add_argument("--corpus", type=Path, default=None, help="UTF-8 text file (default: generated text)")
    data.add_argument("--sizes", type=_megabytes(), nargs="+", default=[10, 100], metavar="MB",
                      help="corpus sizes to prepare, in MB (default: 10 100)")
    data.add_argument("--workers", type=bounded_int(1024, "processes"), default=None,
                      help="data prepare --workers (default: usable cores)")
    data.add_argument("--tokenizer", type=Path, default=None, metavar="DIR",
                      help="a saved BPE tokenizer (default: one trained here on the corpus's first 2 MB)")
    data.add_argument("--vocab-size", type=_BPE_VOCAB, default=8192, help="vocabulary of the tokenizers trained here")
    data.add_argument("--train-mb", type=_megabytes(zero=True), default=10,
                      help="MB for the tokenizer-training comparison (0: skip)")
    data.add_argument("--repeats", type=_REPEATS, default=1, help="runs per side, alternating (median reported)")
    data.add_argument("--out", type=Path, default=DEFAULT_BENCH_DIR / "data", help=_OUT_HELP)
    data.set_defaults(func=_run_data)

    ev = commands.add_parser(
        "eval", help="lm-eval tasks: ours in process vs the harness's hf backend (same export), and the server route"
    )
    ev.add_argument("package", metavar="PACKAGE", nargs="?", default=None,
                    help="a GPT-2- or Llama-family package (export-hf must take it); default: a generated model with "
                         "two generated local tasks (HellaSwag- and wikitext-shaped), no download")
    ev.add_argument("--tasks", default=None, metavar="T1,T2", help="harness tasks, comma-separated (with PACKAGE)")
    ev.add_argument("--include-path", type=Path, default=None, metavar="DIR", help="a folder of task YAML files")
    ev.add_argument("--limit", type=bounded_int(1_000_000, "documents per task"), default=None,
                    help="at most N documents per task")
    ev.add_argument("--batch-size", type=_BATCH, default=16, help="ours: sequences per forward (default 16)")
    ev.add_argument("--hf-batch-sizes", type=_BATCH_LIST, default=(1, 8, 32), help="the hf backend's, tried each")
    ev.add_argument("--server-batch-size", type=bounded_int(1024, "prompts per request", low=0), default=8,
                    help="prompts per server request (0: skip)")
    ev.add_argument("--rounds", type=_REPEATS, default=3, help="timed passes per route (median reported)")
    ev.add_argument("--json", type=Path, default=None, help="also write the result as JSON to this file " + _JSON_HELP)
    ev.set_defaults(func=_run_eval)

    ttl = commands.add_parser(
        "time-to-loss",
        help="whole `llm-lab train` processes of a baseline and a fast config, timed to a target validation loss",
        description="Time whole `llm-lab train` processes of a baseline and a fast config to a target validation "
        "loss, alternating over repeats, and print each run's time and the ratio. --threads also goes to every "
        "training run alike (default: inherited).",
    )
    ttl.add_argument("--data", type=Path, default=None,
                     help="the text corpus (default: tiny Shakespeare, your data/ first: see default_corpus_path)")
    ttl.add_argument("--baseline", type=Path, default=Path("configs/shakespeare_char.json"))
    ttl.add_argument("--fast", type=Path, default=Path("configs/shakespeare_char_fast.json"))
    ttl.add_argument("--add", action="append", default=[], metavar="LABEL=CONFIG",
                     help="another config in the rotation (repeatable), e.g. sixty=configs/shakespeare_char_60s.json")
    ttl.add_argument("--target", type=float, default=None, help="validation loss to reach (default 1.88)")
    ttl.add_argument("--repeats", type=_REPEATS, default=1, help="alternating rounds; medians are reported")
    ttl.add_argument("--out", type=Path, default=Path("experiments/time_to_loss"), help=_OUT_HELP)
    ttl.add_argument("--quick", action="store_true",
                     help="tiny model, a few steps (checks the output format in seconds; not a benchmark)")
    ttl.set_defaults(func=_run_time_to_loss)


def _run_env(args: argparse.Namespace) -> int:
    _check_device(args.device)
    from llm_lab.experiments.env import collect_environment, format_env_report

    _check_outputs(json_file=args.json)
    report = collect_environment(
        args.device, measure_peak=not args.no_peak, check_compile_works=not args.no_compile
    )
    print(format_env_report(report), end="")
    if args.json is not None:
        print(f"wrote {write_output_json(args.json, 'bench env', report.to_dict())}")
    return 0


def _run_attention(args: argparse.Namespace) -> int:
    _check_device(args.device)
    from llm_lab.experiments.attention_bench import (
        AttentionBenchConfig,
        attention_summary_table,
        quick_attention_config,
        run_attention_benchmark,
        write_attention_results,
    )

    base = quick_attention_config(args.device) if args.quick else AttentionBenchConfig(device=args.device)
    chosen = {
        "seq_lens": args.seq_lens,
        "head_dims": args.head_dims,
        "dtypes": args.dtypes,
        "modes": args.modes,
        "backends": args.backends,
        "batch_size": args.batch_size,
        "n_head": args.n_head,
        "repeats": args.repeats,
    }
    given = {name: value for name, value in chosen.items() if value is not None}
    config = dataclasses.replace(base, **given, measure_memory=not args.no_memory)  # validated again
    _check_outputs(folder=args.out)
    rows = run_attention_benchmark(config)
    title = f"B={config.batch_size}, H={config.n_head}, {args.device}"
    with output_directory(args.out, "bench attention") as staged:
        paths = [staged.final(p) for p in write_attention_results(rows, staged.path, title=title).values()]
    print(attention_summary_table(rows), end="")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _run_step(args: argparse.Namespace) -> int:
    _check_device(args.device)
    from llm_lab.experiments.step_bench import (
        StepBenchConfig,
        load_step_model_config,
        quick_step_config,
        run_step_benchmark,
        step_summary_table,
        write_step_results,
    )

    if args.quick:
        config = quick_step_config(args.device)
    else:
        model_config, batch_size = load_step_model_config(args.config, args.overrides)
        config = StepBenchConfig(model=model_config, batch_size=batch_size, device=args.device)
    if args.batch_size is not None:
        config.batch_size = args.batch_size
    if args.precisions is not None:
        config.precisions = tuple(args.precisions)
    if args.optimizers is not None:
        config.optimizers = tuple(args.optimizers)
    if args.no_compile:
        config.compile_modes = (False,)
    if args.no_baseline:
        config.baseline = False
    if args.sft:
        config.sft = True
    if args.rounds is not None:
        config.rounds = args.rounds
    if args.steps is not None:
        config.steps = args.steps
    if args.warmup is not None:
        config.warmup = args.warmup
    config.validate()
    _check_outputs(folder=args.out)
    result = run_step_benchmark(config)
    with output_directory(args.out, "bench step") as staged:
        paths = [staged.final(p) for p in write_step_results(result, staged.path).values()]
    print(step_summary_table(result), end="")
    print(json.dumps({"wrote": [str(p) for p in paths]}))
    return 0


def _run_threads(args: argparse.Namespace) -> int:
    import sys

    from llm_lab.experiments.thread_bench import (
        ThreadBenchConfig,
        run_thread_benchmark,
        thread_table,
        write_thread_results,
    )

    config = ThreadBenchConfig.quick() if args.quick else ThreadBenchConfig()
    if args.repeats is not None:
        config.repeats = args.repeats
    if args.conditions is not None:
        config.conditions = tuple(args.conditions)
    config.validate()
    _check_outputs(folder=args.out)
    rows = run_thread_benchmark(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    note = f"{'--quick' if args.quick else 'full'} run; per row: the idle cores seen before/after and the load."
    with output_directory(args.out, "bench threads") as staged:
        paths = [staged.final(p) for p in write_thread_results(rows, staged.path, note=note).values()]
    print(thread_table(rows), end="")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _run_generate(args: argparse.Namespace) -> int:
    from llm_lab.experiments.generate_bench import BenchSettings, format_report, run_benchmark

    chosen = {
        "device": args.device,
        "repeats": args.repeats,
        "new_tokens": args.new_tokens,
        "batch_sizes": args.batch_sizes,
        "contexts": args.contexts,
        "vocab_size": args.vocab_size,
        "dtype": args.dtype,
    }
    base = BenchSettings.quick() if args.quick else BenchSettings()
    # replace() validates the settings again: a bad value is one line, before any model is built.
    settings = dataclasses.replace(base, **{k: v for k, v in chosen.items() if v is not None})
    _check_outputs(json_file=args.json)
    results = run_benchmark(settings)
    print(format_report(results))
    if args.json:
        write_output_json(args.json, "bench generate", results)
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    import sys

    from llm_lab.experiments.serve_bench import (
        ServeBenchSettings,
        format_serve_table,
        run_serve_benchmark,
        write_serve_results,
    )

    chosen = {
        "clients": args.clients,
        "requests_per_client": args.requests,
        "new_tokens": args.new_tokens,
        "max_batch": args.max_batch,
        "rounds": args.rounds,
        "dtype": args.dtype,
    }
    base = ServeBenchSettings.quick() if args.quick else ServeBenchSettings()
    # replace() validates again: a bad value is one line, before a model is built or a server started.
    settings = dataclasses.replace(base, **{k: v for k, v in chosen.items() if v is not None})
    _check_outputs(folder=args.out)
    rows = run_serve_benchmark(settings, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_serve_table(rows), end="")
    with output_directory(args.out, "bench serve") as staged:
        paths = [staged.final(p) for p in write_serve_results(rows, settings, staged.path).values()]
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    try:
        from llm_lab.experiments.eval_bench import EvalBenchSettings, format_eval_bench, run_eval_bench
    except ModuleNotFoundError as error:
        raise ValueError(
            f'bench eval needs lm-eval ({error.name} is missing): pip install "foundry-llm[eval]"'
        ) from None

    settings = EvalBenchSettings(
        package=None if args.package is None else Path(args.package),
        tasks=tuple(name.strip() for name in (args.tasks or "").split(",") if name.strip()),
        include_path=args.include_path,
        limit=args.limit,
        batch_size=args.batch_size,
        hf_batch_sizes=args.hf_batch_sizes,
        server_batch_size=args.server_batch_size,
        rounds=args.rounds,
    )
    _check_outputs(json_file=args.json)
    result = run_eval_bench(settings)
    print(format_eval_bench(result))
    if args.json:
        write_output_json(args.json, "bench eval", result)
    return 0

def _run_llama_cpp(args: argparse.Namespace) -> int:
    from llm_lab.experiments.llama_cpp_check import format_results, run_llama_cpp_check

    if not Path(args.llama_python).is_file():
        raise FileNotFoundError(f"--llama-python: no such file: {args.llama_python} (make llama-cpp-check builds one)")
    results = run_llama_cpp_check(args.llama_python, new_tokens=args.new_tokens)
    print(format_results(results))
    return 0 if all(r.passed for r in results) else 1


def _run_tokenizer(args: argparse.Namespace) -> int:
    import sys

    from llm_lab.core.data.download import default_corpus_path
    from llm_lab.experiments.tokenizer_bench import format_table, run_tokenizer_benchmark

    data = args.data or default_corpus_path(REPO_ROOT)
    _check_outputs(json_file=args.json)
    rows = run_tokenizer_benchmark(data, args.vocab_sizes, args.repeats, log=lambda msg: print(msg, file=sys.stderr))
    print(f"data: {data} ({data.stat().st_size:,} bytes), repeats: {args.repeats}")
    print(format_table(rows))
    if args.json:
        write_output_json(args.json, "bench tokenizer", {"rows": [r.to_dict() for r in rows]})
    return 0


def _run_data(args: argparse.Namespace) -> int:
    import os
    import sys
    import tempfile

    from llm_lab.core.data.prepare import usable_workers
    from llm_lab.experiments.data_bench import format_tables, run_data_benchmark, write_data_bench_results

    workers = args.workers or usable_workers()
    _check_outputs(folder=args.out)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())  # other work on the machine skews every number
    with tempfile.TemporaryDirectory(prefix="llm-lab-bench-data-") as work:
        rows, train_row = run_data_benchmark(
            work, corpus=args.corpus, sizes_mb=tuple(args.sizes), workers=workers, tokenizer_dir=args.tokenizer,
            vocab_size=args.vocab_size, repeats=args.repeats, train_mb=args.train_mb,
            log=lambda msg: print(msg, file=sys.stderr),
        )
    context = {"corpus": str(args.corpus or "generated text"), "workers": workers, "repeats": args.repeats,
               "load average before": load_before,
               "load average after": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    print(format_tables(rows, train_row))
    with output_directory(args.out, "bench data") as staged:
        written = staged.final(write_data_bench_results(rows, train_row, staged.path, context))
    print(f"wrote {written}")
    return 0


def _run_time_to_loss(args: argparse.Namespace) -> int:
    from llm_lab.core.data.download import default_corpus_path
    from llm_lab.experiments.time_to_loss import (
        DEFAULT_TARGET,
        QUICK_OVERRIDES,
        format_summary,
        run_time_to_loss,
        write_time_to_loss_results,
    )

    configs = {"baseline": args.baseline, "fast": args.fast}
    for item in args.add:
        label, sep, path = item.partition("=")
        if not sep or not label or not path or label in configs:
            raise ValueError(f"--add wants a new LABEL=CONFIG (not baseline/fast or a repeat), got {item!r}")
        configs[label] = Path(path)
    _check_outputs(folder=args.out)
    # The runs and results are written beside --out and swapped in at the end (llm_lab.utils.outputs).
    with output_directory(args.out, "bench time-to-loss") as staged:
        try:
            summary = run_time_to_loss(
                configs,
                args.data or default_corpus_path(REPO_ROOT),
                staged.path,
                target=DEFAULT_TARGET if args.target is None else args.target,
                repeats=args.repeats,
                overrides=QUICK_OVERRIDES if args.quick else (),
                threads=args.threads,
            )
        except RuntimeError as e:  # a failed training process: its message, not a traceback
            raise CLIError(str(e)) from None
        for run in summary.runs:  # name each run by where it will be
            run.out_dir = str(staged.final(run.out_dir))
        print(format_summary(summary))
        write_time_to_loss_results(summary, staged.path)
    return 0
