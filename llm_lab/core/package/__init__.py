"""core/package."""
