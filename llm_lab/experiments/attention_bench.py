"""Attention micro-benchmark: the plain reference attention against ``scaled_dot_product_attention``.

For every sequence length, head size, dtype and mode (forward only, under ``torch.no_grad``; forward and
backward) it measures the median time per call and the peak extra memory (see ``llm_lab.experiments.measure``
for how memory is measured on a CPU) of:

- ``reference``: the model's plain path (``llm_lab.core.model.attention.reference_attention``: scores, causal
  mask, float32 softmax, weighted sum), which materialises the ``(B, H, T, T)`` score matrix;
- ``sdpa``: PyTorch's fused path (``scaled_dot_product_attention`` with ``is_causal=True``), whatever
  kernel PyTorch's dispatcher picks;
- ``chunked``: the chunked causal kernel (``llm_lab.core.model.chunked_attention``), which the default ``auto``
  attention uses for CPU passes: large batched products over the causal part only, probabilities kept for the
  backward;
- ``sdpa_<kernel>``: each SDPA kernel this machine has, forced with ``torch.nn.attention.sdpa_kernel``
  (``math`` and ``flash`` on CPUs; ``efficient`` and ``cudnn`` as well on CUDA GPUs).

Each fast path's forward output is also compared with the reference (``max_abs_diff``), so a speed-up never
hides a wrong answer. Results: ``attention.csv``, ``attention.md`` and ``attention.png``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from llm_lab.core.model.attention import reference_attention, sdpa_attention
from llm_lab.core.model.chunked_attention import chunked_causal_attention
from llm_lab.experiments.measure import peak_memory_bytes, time_callable
from llm_lab.experiments.plots import plot_attention_benchmark
from llm_lab.experiments.tables import markdown_table, write_csv
from llm_lab.utils.devices import resolve_device
from llm_lab.utils.io import atomic_write_text

MODES: tuple[str, ...] = ("fwd", "fwd_bwd")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Kernels that can be forced through torch.nn.attention.sdpa_kernel (availability is probed per machine).
SDPA_KERNELS: dict[str, str] = {
    "sdpa_math": "MATH",
    "sdpa_flash": "FLASH_ATTENTION",
    "sdpa_efficient": "EFFICIENT_ATTENTION",
    "sdpa_cudnn": "CUDNN_ATTENTION",
}
CSV_COLUMNS: tuple[str, ...] = (
    "backend",
    "dtype",
    "mode",
    "batch_size",
    "n_head",
    "seq_len",
    "head_dim",
    "time_ms",
    "peak_mem_mib",
    "speedup_vs_reference",
    "max_abs_diff",
)


@dataclass
class AttentionBenchConfig:
    """What to measure.

    Attributes:
        seq_lens: sequence lengths ``T``.
        head_dims: head sizes.
        dtypes: names from ``DTYPES``.
        modes: ``fwd`` and/or ``fwd_bwd``.
        backends: names to run (``reference``, ``sdpa``, ``sdpa_math``, ...); ``None`` means every one available.
        batch_size: ``B``.
        n_head: ``H``.
        device: ``cpu``, ``cuda``, ...
        repeats: timed trials per case (the median is reported).
        warmup: untimed calls before timing.
        min_time_s: each trial runs at least this long.
        measure_memory: also measure peak memory (one extra profiled call per case).
        seed: for the random inputs.
    """

    seq_lens: Sequence[int] = (128, 256, 512, 1024)
    head_dims: Sequence[int] = (32, 64)
    dtypes: Sequence[str] = ("float32", "bfloat16")
    modes: Sequence[str] = MODES
    backends: Sequence[str] | None = None
    batch_size: int = 4
    n_head: int = 6
    device: str = "cpu"
    repeats: int = 5
    warmup: int = 2
    min_time_s: float = 0.02
    measure_memory: bool = True
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("seq_lens", "head_dims"):
            values = list(getattr(self, name))
            if not values or any(not isinstance(v, int) or v <= 0 for v in values):
                raise ValueError(f"{name} must be a non-empty list of positive integers, got {values}")
        unknown = [d for d in self.dtypes if d not in DTYPES]
        if unknown or not self.dtypes:
            raise ValueError(f"unknown dtype(s) {unknown or self.dtypes}; choose from: {', '.join(DTYPES)}")
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not self.modes:
            raise ValueError(f"unknown mode(s) {unknown or self.modes}; choose from: {', '.join(MODES)}")
        if self.backends is not None:
            known = ("reference", "sdpa", "chunked", *SDPA_KERNELS)
            unknown = [b for b in self.backends if b not in known]
            if unknown or not self.backends:
                raise ValueError(f"unknown backend(s) {unknown or self.backends}; choose from: {', '.join(known)}")
        for name in ("batch_size", "n_head", "repeats"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        resolve_device(self.device)


def quick_attention_config(device: str = "cpu") -> AttentionBenchConfig:
    """A tiny setting that runs in seconds (for tests and ``--quick``)."""
    return AttentionBenchConfig(
        seq_lens=(32, 64), head_dims=(16,), batch_size=2, n_head=2, device=device, repeats=2, warmup=1,
        min_time_s=0.002,
    )


@contextlib.contextmanager
def _forced_kernel(kernel: str | None) -> Iterator[None]:
    if kernel is None:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(getattr(SDPBackend, kernel)):
        yield


AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _backend_fn(backend: str) -> AttentionFn:
    if backend == "reference":
        return lambda q, k, v: reference_attention(q, k, v, None, 0.0)
    if backend == "chunked":
        return chunked_causal_attention
    kernel = SDPA_KERNELS.get(backend)

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with _forced_kernel(kernel):
            return sdpa_attention(q, k, v, None, 0.0)

    return run


def available_backends(device: str = "cpu", dtypes: Sequence[str] = ("float32",)) -> list[str]:
    """Backends that run here for every one of ``dtypes`` (forward and backward on a small causal input)."""
    found = ["reference", "sdpa", "chunked"]
    for backend in SDPA_KERNELS:
        fn = _backend_fn(backend)
        try:
            for name in dtypes:
                q = torch.randn(1, 2, 16, 16, device=device, dtype=DTYPES[name], requires_grad=True)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "no viable backend" warnings precede the error
                    fn(q, q, q).sum().backward()
        except RuntimeError:
            continue
        found.append(backend)
    return found


def _make_case(
    fn: AttentionFn, mode: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad_out: torch.Tensor
) -> Callable[[], Any]:
    if mode == "fwd":

        def forward() -> torch.Tensor:
            with torch.no_grad():
                return fn(q, k, v)

        return forward

    def forward_backward() -> tuple[torch.Tensor, ...]:
        out = fn(q, k, v)
        # autograd.grad returns the gradients instead of accumulating them into .grad across calls.
        return torch.autograd.grad(out, (q, k, v), grad_out)

    return forward_backward


def run_attention_benchmark(config: AttentionBenchConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Measure every case of ``config``; one row (see ``CSV_COLUMNS``) per backend, dtype, mode and shape."""
    backends = list(config.backends) if config.backends is not None else available_backends(
        config.device, config.dtypes
    )
    if "reference" not in backends:
        backends.insert(0, "reference")  # speed-ups and differences are relative to it
    generator = torch.Generator().manual_seed(config.seed)
    cases = [
        (dtype, head_dim, seq_len)
        for dtype in config.dtypes
        for head_dim in config.head_dims
        for seq_len in config.seq_lens
    ]
    total = len(cases) * len(config.modes) * len(backends)
    rows: list[dict[str, Any]] = []
    with tqdm(total=total, desc="attention", disable=not progress, leave=False) as bar:
        for dtype_name, head_dim, seq_len in cases:
            dtype = DTYPES[dtype_name]
            shape = (config.batch_size, config.n_head, seq_len, head_dim)
            q, k, v, grad_out = (
                torch.randn(shape, generator=generator).to(device=config.device, dtype=dtype) for _ in range(4)
            )
            q, k, v = (t.requires_grad_() for t in (q, k, v))
            with torch.no_grad():
                expected = _backend_fn("reference")(q, k, v).float()
            for mode in config.modes:
                reference_ms = None
                for backend in backends:
                    bar.set_postfix_str(f"{backend} {dtype_name} {mode} T={seq_len} hd={head_dim}")
                    fn = _backend_fn(backend)
                    call = _make_case(fn, mode, q, k, v, grad_out)
                    seconds = time_callable(
                        call, config.device, warmup=config.warmup, repeats=config.repeats,
                        min_time_s=config.min_time_s,
                    )
                    peak = peak_memory_bytes(call, config.device) if config.measure_memory else None
                    with torch.no_grad():
                        diff = (fn(q, k, v).float() - expected).abs().max().item()
                    time_ms = seconds * 1e3
                    if backend == "reference":
                        reference_ms = time_ms
                    rows.append(
                        {
                            "backend": backend,
                            "dtype": dtype_name,
                            "mode": mode,
                            "batch_size": config.batch_size,
                            "n_head": config.n_head,
                            "seq_len": seq_len,
                            "head_dim": head_dim,
                            "time_ms": time_ms,
                            "peak_mem_mib": None if peak is None else peak / 2**20,
                            "speedup_vs_reference": reference_ms / time_ms if reference_ms else None,
                            "max_abs_diff": diff,
                        }
                    )
                    bar.update()
    return rows


def attention_summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table with one line per (dtype, mode, head size, length) and a time column per backend."""
    backends = list(dict.fromkeys(row["backend"] for row in rows))
    grouped: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = (row["dtype"], row["mode"], row["head_dim"], row["seq_len"])
        line = grouped.setdefault(
            key, {"dtype": row["dtype"], "mode": row["mode"], "head_dim": row["head_dim"], "seq_len": row["seq_len"]}
        )
        line[f"{row['backend']} ms"] = row["time_ms"]
        if row["peak_mem_mib"] is not None:
            line[f"{row['backend']} MiB"] = row["peak_mem_mib"]
    columns = ["dtype", "mode", "head_dim", "seq_len"] + [f"{b} ms" for b in backends]
    if any(row["peak_mem_mib"] is not None for row in rows):
        columns += [f"{b} MiB" for b in backends]
    return markdown_table(list(grouped.values()), columns, digits=3)


def write_attention_results(rows: Sequence[dict[str, Any]], out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """Write ``attention.csv``, ``attention.md`` and ``attention.png`` under ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": write_csv(out_dir / "attention.csv", rows, CSV_COLUMNS),
        "md": out_dir / "attention.md",
        "png": out_dir / "attention.png",
    }
    heading = f"# Attention benchmark{': ' + title if title else ''}\n\n"
    atomic_write_text(paths["md"], heading + attention_summary_table(rows))
    plot_attention_benchmark(rows, paths["png"], title=title)
    return paths
