"""The MiniGPT model: norms, positional encodings, attention, MLP, block, model. Knows nothing of training."""

from llm_lab.core.model.config import MiniGPTConfig

__all__ = ["MiniGPTConfig"]
