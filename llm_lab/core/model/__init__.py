"""The MiniGPT model: norms, positional encodings, attention, MLP, block, model. Knows nothing of training."""

from llm_lab.core.model.config import MiniGPTConfig
from llm_lab.core.model.gpt import MiniGPT, init_weights, lm_loss
from llm_lab.core.model.kv_cache import KVCache
from llm_lab.core.model.trace import ForwardTrace

__all__ = ["ForwardTrace", "KVCache", "MiniGPT", "MiniGPTConfig", "init_weights", "lm_loss"]
