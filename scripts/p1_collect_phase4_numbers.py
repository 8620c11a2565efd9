"""Collect every run directory under experiments/ (or a given root) into report.md, report.csv and curves.png.

A thin wrapper over ``llm-lab experiment collect``; ``python scripts/p1_collect_phase4_numbers.py --help``
lists the options.
"""

import sys

from llm_lab.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", "collect", *sys.argv[1:]]))
