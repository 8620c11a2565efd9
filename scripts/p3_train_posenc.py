"""Positional-encoding study: learned, sinusoidal, RoPE, ALiBi and none on one corpus, budget and seed.

Writes results.csv, results.md and loss_curves.png (plus one run directory per encoding), with the validation
loss at twice the training context for the encodings that can run past it. A thin wrapper over
``llm-lab experiment posenc``; ``python scripts/p3_train_posenc.py --help`` lists the options (``--quick`` runs
a tiny version in about a minute).
"""

import sys

from llm_lab.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command(["experiment", "posenc"]))
