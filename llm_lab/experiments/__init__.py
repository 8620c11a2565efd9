"""Experiments and benchmarks: library code behind ``llm-lab bench|experiment`` and the ``scripts/`` wrappers.

Every benchmark lives here, with no argument parsing (that is ``llm_lab.cli.bench`` / ``llm_lab.cli.experiment``).

- ``env``: what the machine offers (devices, dtypes, bf16 matrix units, ``torch.compile``, matmul peak).
- ``attention_bench``: reference attention vs ``scaled_dot_product_attention`` backends, time and peak memory.
- ``step_bench``: one training step: ms/step, tokens/s, MFU; eager vs compiled; ratio to a plain baseline.
- ``thread_bench``: ``--threads auto`` vs fixed thread counts, idle and next to a busy loop.
- ``generate_bench``: KV-cached ``generate`` vs Hugging Face ``generate`` on the same weights.
- ``tokenizer_bench``: our BPE vs HF ``tokenizers`` (training) and ``tiktoken`` (encoding).
- ``time_to_loss``: whole ``llm-lab train`` processes of two configs timed to a target validation loss.
- ``posenc``: the positional-encoding study (learned, sinusoidal, RoPE, ALiBi, none) through the real Trainer.
- ``report``: tables (CSV, markdown) and the collection of run directories into one report.
"""
