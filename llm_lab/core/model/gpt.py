"""MiniGPT (placeholder until the model lands)."""

from llm_lab.core.model.config import MiniGPTConfig

__all__ = ["MiniGPTConfig"]
