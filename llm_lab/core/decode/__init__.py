"""core/decode."""
