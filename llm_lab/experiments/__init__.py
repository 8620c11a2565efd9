"""Experiments and benchmarks: library code behind ``scripts/p1_*``, ``scripts/p3_*`` and ``llm-lab bench|experiment``.

- ``env``: what the machine offers (devices, dtypes, bf16 matrix units, ``torch.compile``, matmul peak).
- ``attention_bench``: reference attention vs ``scaled_dot_product_attention`` backends, time and peak memory.
- ``step_bench``: one training step: ms/step, tokens/s, MFU; eager vs compiled; ratio to a plain baseline.
- ``posenc``: the positional-encoding study (learned, sinusoidal, RoPE, ALiBi, none) through the real Trainer.
- ``report``: tables (CSV, markdown) and the collection of run directories into one report.
"""
