"""Thread benchmark: ``--threads auto`` vs 1 and 2 threads, on an idle machine and next to a busy loop.

    python scripts/bench_threads.py --quick          # a minute or two on 2 cores
    python scripts/bench_threads.py --repeats 5      # steadier medians

Times training the demo model, training the 10M model and batch-1 decoding, and prints each setting's ratio to
the best fixed thread count (the goal: auto within 1.10). It starts and stops the busy background process
itself. A thin wrapper over ``llm-lab bench threads`` (``llm_lab.experiments.thread_bench``).
"""

import sys

from llm_lab.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command(["bench", "threads"]))
