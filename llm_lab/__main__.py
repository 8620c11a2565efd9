"""`python -m llm_lab ...` is the same as the `llm-lab` console script."""

from llm_lab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
