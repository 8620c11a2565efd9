"""What this machine offers for training: devices, dtypes, bf16 matrix units, torch.compile, matmul peak.

A thin wrapper over ``llm-lab bench env``; ``python scripts/p1_env_sanity.py --help`` lists the options.
"""

import sys

from llm_lab.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command(["bench", "env"]))
