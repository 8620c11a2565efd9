"""Benchmark: our byte-level BPE vs HF `tokenizers` (training) and `tiktoken` (encoding, same ranks).

    python scripts/bench_tokenizer.py                       # tiny Shakespeare, vocab 1024 and 4096, 5 repeats
    python scripts/bench_tokenizer.py --data my.txt --vocab-sizes 2048 --repeats 3 --json out.json

Needs the dev dependencies (`pip install -r requirements-dev.txt`). Targets: training within 2x of HF at vocab
4096, encoding within 3x of tiktoken. A thin wrapper over ``llm-lab bench tokenizer``; what is timed is described
in llm_lab/experiments/tokenizer_bench.py.
"""

import sys

from llm_lab.cli import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command(["bench", "tokenizer"], argv)


if __name__ == "__main__":
    sys.exit(main())
