"""core/train."""
