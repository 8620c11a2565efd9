"""``llm-lab chat``: talk to a chat model in the terminal; ``llm-lab rl``: GRPO on a task with checkable answers.

``chat`` reads one user message a line (from the terminal, or from a pipe: each line is a turn), keeps the
conversation, and prints each assistant reply. ``rl`` fine-tunes a chat model (an SFT package or run) with
:class:`~llm_lab.core.chat.rl.GRPOTrainer`: ``OUT/metrics.csv`` and ``OUT/rl_state.pt`` as it goes (``--resume``
continues exactly), and ``OUT/package`` (an llm-lab package) at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llm_lab.cli.sample import (
    add_sampling_config_arguments_on_first_use,
    positive_int,
    sampling_config_from_args,
    seed_int,
)
from llm_lab.utils.paths import check_input_file

RL_PACKAGE_DIR = "package"


def register(subparsers: argparse._SubParsersAction) -> None:
    chat = subparsers.add_parser("chat", help="talk to a chat model (an SFT or RL package) in the terminal")
    chat.add_argument("path", metavar="PACKAGE_OR_RUN", help="a package or run directory whose tokenizer has the "
                      "chat tokens")
    chat.add_argument("--system", default=None, metavar="TEXT", help="a system message to start the conversation")
    chat.add_argument("--max-new-tokens", type=positive_int, default=200, metavar="N", help="longest reply (200)")
    chat.add_argument("--seed", type=seed_int, default=None, metavar="S", help="same seed, same replies")
    chat.add_argument("--checkpoint", choices=("best", "last"), default=None, help="weights to use")
    chat.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    add_sampling_config_arguments_on_first_use(chat)
    chat.set_defaults(func=_chat)

    rl = subparsers.add_parser("rl", help="reinforcement learning (GRPO) of a chat model on a checkable task")
    rl.add_argument("--init-from", required=True, metavar="PATH", help="the chat model to start from (SFT package "
                    "or run); it is also the KL reference")
    rl.add_argument("--config", default=None, metavar="FILE", help="JSON with an \"rl\" section (RLConfig)")
    rl.add_argument("--set", action="append", default=[], metavar="rl.KEY=VALUE", help="override a config value")
    rl.add_argument("--out", required=True, metavar="DIR", help="the run directory (new, or --resume)")
    rl.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    rl.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    rl.set_defaults(func=_rl)


def _load_chat_model(path: str, checkpoint: str | None, device: str):
    from llm_lab.core.chat import ChatTemplate
    from llm_lab.core.package.io import load_package_or_run

    config, tokenizer, model = load_package_or_run(path, checkpoint=checkpoint, device=device)
    try:
        template = ChatTemplate(tokenizer)
    except ValueError:
        raise ValueError(f"{path} is not a chat model: its tokenizer has no chat tokens (fine-tune it on "
                         "conversations first)") from None
    return config, tokenizer, model, template


def _chat(args: argparse.Namespace) -> int:
    sampling = sampling_config_from_args(args)
    from llm_lab.core.chat.reply import reply

    config, _, model, template = _load_chat_model(args.path, args.checkpoint, args.device)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    for turn, line in enumerate(_lines(interactive)):
        text = line.rstrip("\n")
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        prompt_length = len(template.prompt_ids(messages))
        room = config.max_positions - prompt_length
        if room < 1:
            raise ValueError(f"the conversation has {prompt_length} tokens and fills the model's context of "
                             f"{config.max_positions}; start a new one")
        seed = None if args.seed is None else args.seed + turn
        answer = reply(model, template, messages, min(args.max_new_tokens, room), sampling=sampling, seed=seed)
        messages.append({"role": "assistant", "content": answer})
        print(f"assistant: {answer}" if interactive else answer, flush=True)
    return 0


def _lines(interactive: bool):
    if not interactive:
        yield from sys.stdin
        return
    print("Type a message and press Enter; Ctrl+D or Ctrl+C ends the chat.", file=sys.stderr)
    while True:
        try:
            yield input("you: ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return


def _rl(args: argparse.Namespace) -> int:
    from llm_lab.core.chat.rl import RL_STATE_FILE, GRPOTrainer, RLConfig
    from llm_lab.utils.config_loader import apply_overrides, config_to_dict, load_json_config

    rl_config = load_json_config(args.config, RLConfig) if args.config else RLConfig()
    rl_config = apply_overrides({"rl": rl_config}, args.set)["rl"]
    out = Path(args.out)
    if args.resume and not (out / RL_STATE_FILE).is_file():
        raise ValueError(f"--resume: {out} holds no RL run ({RL_STATE_FILE} is missing)")
    if not args.resume and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not empty; choose a new directory, or --resume the run there")
    config, tokenizer, model, template = _load_chat_model(args.init_from, None, args.device)
    trainer = GRPOTrainer(model, template, rl_config, out)
    if args.resume:
        trainer.resume(out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        from llm_lab.utils.io import atomic_write_json

        atomic_write_json(out / "rl_config.json", {"rl": config_to_dict(rl_config), "init_from": str(args.init_from)})
    for row in trainer.train():
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "elapsed_s"}
        print(json.dumps(shown), flush=True)
    from llm_lab.core.package.io import save_model_package

    package = save_model_package(out / RL_PACKAGE_DIR, config, tokenizer, trainer.model, step=trainer.step,
                                 source={"kind": "rl", "task": rl_config.task})
    print(f"package written to {package}")
    return 0


def add_synth_parser(data_subparsers: argparse._SubParsersAction) -> None:
    """``llm-lab data synth TASK``: generated conversations with checkable answers (added to the ``data`` group)."""
    synth = data_subparsers.add_parser(
        "synth",
        help="generate a task's conversations with checkable answers (JSONL)",
        description="Write N generated examples of TASK as JSONL, one {\"messages\": [...], \"target\": ..., "
        "\"task\": ...} a line: the messages train a chat model (SFT), the target is what the task's checker "
        "compares (llm-lab eval --task-file, llm-lab rl). The same seed writes the same file.",
    )
    synth.add_argument("task", metavar="TASK", help="addition, addition_steps or reverse")
    synth.add_argument("--n", type=positive_int, required=True, help="how many examples to write")
    synth.add_argument("--seed", type=seed_int, default=0, help="random seed (default 0)")
    synth.add_argument("--out", required=True, type=Path, metavar="FILE", help="the JSONL file to write")
    synth.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a task setting, e.g. digits=4 (addition) or max_length=8 (reverse)")
    synth.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    synth.set_defaults(func=_synth)


def _synth(args: argparse.Namespace) -> int:
    from llm_lab.core.chat.tasks import make_task, read_task_file, write_task_file
    from llm_lab.utils.config_loader import parse_override_value

    settings = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. digits=4")
        settings[key] = parse_override_value(value)
    task = make_task(args.task, **settings)
    if args.out.exists():
        if not args.overwrite:
            raise ValueError(f"--out {args.out} exists; pass --overwrite to replace it")
        try:  # replace only a file this command wrote
            read_task_file(args.out)
        except (ValueError, OSError, UnicodeDecodeError):
            raise ValueError(f"--out {args.out} is not a task file written by llm-lab data synth; not replacing "
                             "it") from None
    write_task_file(task, args.n, args.seed, args.out)
    print(f"{args.n:,} {args.task} example{'s' if args.n != 1 else ''} written to {args.out}")
    return 0


def run_task_file(args: argparse.Namespace) -> int:
    """``llm-lab eval PACKAGE --task-file FILE``: accuracy on a generated task, by its checker (greedy replies)."""
    from llm_lab.core.chat.reply import score_task_file
    from llm_lab.core.package.io import load_package_or_run

    for option in ("context_length", "max_tokens", "include_path", "num_fewshot", "output_path"):
        if getattr(args, option) is not None:
            raise ValueError(f"--{option.replace('_', '-')} does not apply to --task-file; leave it out")
    check_input_file(args.task_file, "--task-file", "a task file written by llm-lab data synth")
    _, tokenizer, model = load_package_or_run(args.package, checkpoint=args.checkpoint, device=args.device)
    score = score_task_file(model, tokenizer, args.task_file, batch_size=args.batch_size or 64, limit=args.limit)
    if args.json:
        print(json.dumps({"task_file": str(args.task_file), "right": score.right, "total": score.total,
                          "accuracy": score.accuracy}, indent=2))
    else:
        print(f"accuracy  {score.accuracy:.4f} ({score.right:,} of {score.total:,} right) on {args.task_file}")
    return 0
