"""Each speed-run option (Muon, schedules, zero inits, bigram and value embeddings) against the base config, at a
fixed step budget and a fixed time budget, mean and std over 3 seeds; writes ``summary.md``/``summary.csv``.

    python scripts/ablate_speedrun.py --data tiny_shakespeare.txt --time-budget 20 --threads 1
    python scripts/ablate_speedrun.py --data tiny_shakespeare.txt --quick      # checks the outputs in seconds

The library behind it is ``llm_lab.experiments.ablation``; ``--help`` lists the options.
"""

import sys

from llm_lab.experiments.ablation import main

if __name__ == "__main__":
    sys.exit(main())
