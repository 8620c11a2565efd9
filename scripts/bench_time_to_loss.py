"""Time to validation loss 1.88 on tiny Shakespeare: the baseline recipe vs ``configs/shakespeare_char_fast.json``.

Both run as whole ``llm-lab train`` processes (start-up, tokenisation and evaluation included), alternating over
``--repeats``; prints each run's time to the target and the ratio. ``--quick`` checks the output in seconds.

    python scripts/bench_time_to_loss.py --data tiny_shakespeare.txt --repeats 3 --threads 1

A thin wrapper over ``llm-lab bench time-to-loss`` (``llm_lab.experiments.time_to_loss``); ``--help`` lists the
options.
"""

import sys

from llm_lab.cli import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command(["bench", "time-to-loss"], argv)


if __name__ == "__main__":
    sys.exit(main())
