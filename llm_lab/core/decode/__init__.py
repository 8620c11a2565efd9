"""Decoding: sampling settings (``SamplingConfig``) and logits processors, KV-cached generation (``generate``,
``stream``, ``generate_text``, with their settings as one ``GenerationConfig``), a decode-only copy for speed
(``prepare_for_decode``; ``model_in_dtype`` keeps fp32 as it is) and log-probabilities (``score_tokens``,
``TokenLogprob``)."""

from llm_lab.core.decode.fast_linear import model_in_dtype, prepare_for_decode
from llm_lab.core.decode.generate import (
    GenerationConfig,
    GenerationOutput,
    StreamChunk,
    generate,
    generate_text,
    stream,
)
from llm_lab.core.decode.logprobs import TokenLogprob, score_tokens
from llm_lab.core.decode.processors import (
    apply_repetition_penalty,
    apply_temperature,
    min_p_filter,
    top_k_filter,
    top_p_filter,
)
from llm_lab.core.decode.sampler import process_logits, sample_next_token
from llm_lab.core.decode.sampling import LogitsProcessor, SamplingConfig, SamplingParam, register_processor

__all__ = [
    "GenerationConfig",
    "GenerationOutput",
    "LogitsProcessor",
    "SamplingConfig",
    "SamplingParam",
    "StreamChunk",
    "TokenLogprob",
    "apply_repetition_penalty",
    "apply_temperature",
    "generate",
    "generate_text",
    "min_p_filter",
    "model_in_dtype",
    "prepare_for_decode",
    "process_logits",
    "register_processor",
    "sample_next_token",
    "score_tokens",
    "stream",
    "top_k_filter",
    "top_p_filter",
]
