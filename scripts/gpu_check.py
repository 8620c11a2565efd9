"""``make gpu-check``: the CUDA legs of the device tests, then the step, generate and time-to-loss benchmarks on
the GPU, within a time budget, ending in ``report.md`` (GPU, torch/CUDA versions, every number, MFU against the
GPU's measured peak). Without CUDA it says so in one line and exits 0.

    python scripts/gpu_check.py                                    # 7-minute budget, experiments/gpu_check/
    python scripts/gpu_check.py --data ../shared/data/tiny_shakespeare.txt --budget 420

The library behind it is ``llm_lab.experiments.gpu_check``.
"""

import argparse
import sys
from pathlib import Path

from llm_lab.cli.threads import add_threads_argument, apply_threads_option
from llm_lab.experiments.gpu_check import DEFAULT_BUDGET_S, GpuCheckSettings, run_gpu_check
from llm_lab.utils.errors import USER_ERRORS, report_user_error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("experiments/gpu_check"), help="output directory")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds all stages may take together (default {DEFAULT_BUDGET_S:.0f})")  # fmt: skip
    parser.add_argument("--data", type=Path, default=None,
                        help="text for the time-to-loss stage (default: quick mode on self-made text)")  # fmt: skip
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    try:
        apply_threads_option(args.threads)
        settings = GpuCheckSettings(out_dir=args.out, budget_s=args.budget, data=args.data)
    except USER_ERRORS as e:
        return report_user_error(parser.prog, e)
    return run_gpu_check(settings)


if __name__ == "__main__":
    sys.exit(main())
