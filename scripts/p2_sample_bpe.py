"""Sample from a saved model package (e.g. the one ``scripts/p2_train_bpe.py`` writes).

    python scripts/p2_sample_bpe.py artifacts/p2_bpe --prompt "ROMEO:" --max-new-tokens 100 --seed 0

A thin wrapper over ``load_model_package`` and ``llm_lab.core.decode``; ``llm-lab sample PACKAGE`` does the same.
"""

from __future__ import annotations

import argparse
import sys

from llm_lab.cli import USER_ERRORS, report_user_error
from llm_lab.cli.sample import add_sampling_arguments, check_sampling_arguments, sample_and_print
from llm_lab.cli.threads import add_threads_argument, apply_threads_option
from llm_lab.core.package.io import load_model_package


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "package", nargs="?", default="artifacts/p2_bpe", help="package directory (default: %(default)s)"
    )
    parser.add_argument("--checkpoint", choices=("best", "last"), default=None, help="weights to use")
    add_sampling_arguments(parser)
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    try:
        apply_threads_option(args.threads)
        check_sampling_arguments(args)
        _, tokenizer, model = load_model_package(args.package, checkpoint=args.checkpoint, device=args.device)
        return sample_and_print(args, tokenizer, model)
    except USER_ERRORS as e:
        return report_user_error("p2_sample_bpe", e)


if __name__ == "__main__":
    sys.exit(main())
