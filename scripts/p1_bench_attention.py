"""Attention micro-benchmark: reference vs scaled_dot_product_attention vs chunked (time, peak memory; CSV + PNG).

A thin wrapper over ``llm-lab bench attention``; ``python scripts/p1_bench_attention.py --help`` lists the options.
"""

import sys

from llm_lab.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command(["bench", "attention"]))
