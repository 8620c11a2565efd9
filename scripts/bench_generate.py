"""Decoding benchmark: KV-cached ``generate`` vs Hugging Face ``generate`` on the same converted weights.

    python scripts/bench_generate.py                 # 6 layers x 384, batch 1 and 8, 256 new tokens, context 64/1024
    python scripts/bench_generate.py --quick         # tiny settings, a few seconds (used by the tests)
    python scripts/bench_generate.py --repeats 7 --json out.json

Prints greedy tokens/s (ours, HF, ratio, whether both produced the same tokens) and the per-token decode time
at each context length. A thin wrapper over ``llm-lab bench generate`` (``llm_lab.experiments.generate_bench``;
needs ``transformers``).
"""

import sys

from llm_lab.cli import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command(["bench", "generate"], argv)


if __name__ == "__main__":
    sys.exit(main())
