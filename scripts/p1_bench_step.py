"""Training-step benchmark: ms/step, tokens/s and MFU, fp32/bf16, eager/compile, vs a plain fp32 baseline.

A thin wrapper over ``llm-lab bench step``; ``python scripts/p1_bench_step.py --help`` lists the options.
"""

import sys

from llm_lab.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command(["bench", "step"]))
