"""core/tokenization."""
