"""foundry-llm: a small, readable, tested GPT-style language-model lab."""

__version__ = "0.1.0"
