"""Collect every run directory under runs/ and experiments/ (or given folders) into report.md, report.csv, curves.png.

A thin wrapper over ``llm-lab experiment collect``; ``python scripts/p1_collect_phase4_numbers.py --help``
lists the options.
"""

import sys

from llm_lab.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command(["experiment", "collect"]))
