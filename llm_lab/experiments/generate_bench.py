"""Decoding speed: :func:`~llm_lab.core.decode.generate` against Hugging Face ``generate`` on the same weights.

A random GPT-2-style model (``GPT2LMHeadModel``) is converted with ``from_hf_model``, so both sides start from the
very same fp32 weights. Ours decodes through a :func:`~llm_lab.core.decode.prepare_for_decode` copy made once
(on a CPU), as a server does, in the decode dtype of the settings (``fp32``, ``bf16``, ``int8`` or ``auto``); HF
always runs fp32. With fp32 both must give the same tokens; otherwise the share of greedy tokens that agree with
HF's is reported, and a roofline for the dtype: the bytes of linear weights one decode step reads (the decode
copy's ``DecodeLinear.nbytes``: packed weights, scales, biases) against the memory read bandwidth measured in the
same run with the same threads (:func:`read_bandwidth`, the sum of a buffer far larger than the caches), so
``bandwidth / bytes`` tokens/s is what a step that only streamed its weights would reach. Measured, each as the
median of ``repeats`` runs, ours and theirs interleaved so that load from other processes hits both alike:

* greedy tokens per second (``batch * new_tokens / wall time``, prefill included) per batch size, HF with
  ``do_sample=False, use_cache=True`` and its default cache, next to "matmul-only" tokens/s: the model's
  linear layers alone, which bounds what any implementation can reach with these weights here; and
  "kernels-only" tokens/s: the dtype's kernel alone for each product, on inputs already in the kernel's form
  (:meth:`~llm_lab.core.decode.fast_linear.DecodeWeights.kernel_call`), as a share of the roofline: the most a
  step through these kernels could reach if nothing else took any time;
* per-token decode time after a prompt of each context length: the median gap between consecutive new tokens
  (so the prefill is excluded), ours through :func:`~llm_lab.core.decode.stream`, HF through a streamer.

``transformers`` is a development dependency, imported only here. The command line is
``llm-lab bench generate`` (``scripts/bench_generate.py`` runs it under its own name).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from llm_lab.core.decode.fast_linear import DecodeLinear, pays_to_prepare, prepare_for_decode, resolve_decode_dtype
from llm_lab.core.decode.generate import generate, stream
from llm_lab.utils.devices import resolve_device, synchronize
from llm_lab.utils.words import plural

__all__ = ["BenchSettings", "format_report", "read_bandwidth", "run_benchmark"]


@dataclass
class BenchSettings:
    """What to measure (defaults: the 6-layer, 384-wide model of the decoding issue)."""

    n_layer: int = 6
    n_embd: int = 384
    n_head: int = 6
    vocab_size: int = 50257
    n_positions: int = 1280
    prompt_len: int = 16
    new_tokens: int = 256
    batch_sizes: Sequence[int] = (1, 8)
    contexts: Sequence[int] = (64, 1024)
    context_new_tokens: int = 33
    repeats: int = 5
    seed: int = 0
    device: str = "cpu"
    dtype: str = "fp32"
    bandwidth_mib: int = 512
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check the settings before any model is built (:func:`run_benchmark` calls it again).

        Raises:
            ValueError: a size that is not a positive integer, an empty or bad list of batch sizes or contexts,
                a width that the heads do not divide, contexts longer than ``n_positions`` allows, or a device
                this machine does not have.
        """
        for name in ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions", "prompt_len", "new_tokens",
                     "context_new_tokens", "repeats"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("batch_sizes", "contexts"):
            values = tuple(getattr(self, name))
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"{name} must be a non-empty list of positive integers, got {values!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if max(self.contexts) + self.context_new_tokens > self.n_positions:
            raise ValueError(
                f"n_positions={self.n_positions} is too small for a context of {max(self.contexts)} plus "
                f"{self.context_new_tokens} new tokens"
            )
        if self.prompt_len + self.new_tokens > self.n_positions:
            raise ValueError(
                f"n_positions={self.n_positions} is too small for a {self.prompt_len}-token prompt plus "
                f"{self.new_tokens} new tokens"
            )
        resolve_device(self.device)
        resolve_decode_dtype(self.dtype, self.device)
        if isinstance(self.bandwidth_mib, bool) or not isinstance(self.bandwidth_mib, int) or self.bandwidth_mib < 1:
            raise ValueError(f"bandwidth_mib must be a positive integer, got {self.bandwidth_mib!r}")

    @classmethod
    def quick(cls) -> BenchSettings:
        """Tiny settings for a smoke test (seconds, not minutes)."""
        return cls(
            n_layer=2,
            n_embd=64,
            n_head=2,
            vocab_size=128,
            n_positions=96,
            prompt_len=4,
            new_tokens=8,
            batch_sizes=(1, 2),
            contexts=(8, 64),
            context_new_tokens=6,
            repeats=2,
            bandwidth_mib=16,
        )


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def _build_models(s: BenchSettings) -> tuple[Any, torch.nn.Module]:
    import transformers

    from llm_lab.core.package.hf import from_hf_model

    torch.manual_seed(s.seed)
    hf_config = transformers.GPT2Config(
        vocab_size=s.vocab_size,
        n_positions=s.n_positions,
        n_embd=s.n_embd,
        n_layer=s.n_layer,
        n_head=s.n_head,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    hf = transformers.GPT2LMHeadModel(hf_config).to(s.device).eval()
    # No end token: both sides must produce exactly new_tokens tokens.
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return hf, from_hf_model(hf)


def _gap_times(stamps: list[float]) -> float:
    """Median time between consecutive tokens (the first token, which pays for the prefill, is excluded)."""
    return statistics.median(b - a for a, b in zip(stamps[:-1], stamps[1:], strict=True))


def read_bandwidth(mib: int, repeats: int, device: torch.device) -> float:
    """Bytes per second that summing a ``mib``-MiB float32 buffer reads (the median of ``repeats`` runs).

    With the same threads as the decode, and a buffer far larger than the caches, this is the rate a step that
    streams its weights from memory can reach here; the first pass (page faults) is not timed.
    """
    buffer = torch.ones(mib * 2**20 // 4, device=device)
    seconds = _median_time(lambda: buffer.sum(), device, repeats)
    return buffer.numel() * 4 / seconds


def _weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of linear weights (with scales and biases) that one decode step of the decode copy reads."""
    return sum(m.nbytes for m in model.modules() if isinstance(m, DecodeLinear))


def _weights_floor(
    model: torch.nn.Module, fast: torch.nn.Module, batch: int, repeats: int, device: torch.device, dtype: str = "fp32"
) -> float:
    """Seconds per decoding step spent in the model's linear layers alone (the unavoidable matmuls).

    Every ``nn.Linear`` (the output head included) is applied once to a random ``(batch, in_features)`` input,
    in both weight layouts (``nn.Linear``'s own and the decode copy's of
    :func:`~llm_lab.core.decode.fast_linear.prepare_for_decode`, fused groups as one product), and the faster
    total counts: a practical lower bound on the time per token step with these fp32 weights on this machine. For
    another decode dtype only the decode copy in that dtype is timed. ``fast`` is ``model``'s decode copy in
    ``dtype`` (made once per benchmark run, shared with :func:`_kernels_floor`).
    """
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {m.in_features: torch.randn(batch, m.in_features, device=device) for m in layers}

    def run_own() -> None:
        with torch.inference_mode():
            for m in layers:
                torch.nn.functional.linear(inputs[m.in_features], m.weight, m.bias)

    products = [m for m in fast.modules() if isinstance(m, DecodeLinear)]

    def run_decode() -> None:
        with torch.inference_mode():
            for product in products:  # fused groups as one product each, the other layers alone
                product(inputs[product.in_features])

    runs = (run_own, run_decode) if dtype == "fp32" else (run_decode,)
    return min(_median_time(run, device, repeats, steps=True) for run in runs)


def _kernels_floor(fast: torch.nn.Module, batch: int, repeats: int, device: torch.device) -> float:
    """Seconds per decoding step spent in the decode copy's kernels alone: each product's kernel once, called bare
    on a random ``(batch, in_features)`` input prepared beforehand (no module call, no rounding or framing of the
    input, no rescaling of the output). :func:`_weights_floor` runs the same products through the layers (for
    fp32, also ``nn.Linear``'s own layout, and the faster counts); the gap between the two is the cost of the
    operators around each kernel."""
    products = [m for m in fast.modules() if isinstance(m, DecodeLinear)]
    with torch.inference_mode():
        calls = [p.weights.kernel_call(p, torch.randn(batch, p.in_features, device=device)) for p in products]

    def run() -> None:
        with torch.inference_mode():
            for call in calls:
                call()

    return _median_time(run, device, repeats, steps=True)


#: A floor (one step's products, a few milliseconds) is timed over this many runs at least, after a tenth as many
#: untimed ones: with one warm-up and five runs the int8 kernels of the 6 x 384 model timed 2.35 ms a step on the
#: development machine, against 2.02 ms over 200 runs (the first runs after building the inputs are slower).
STEP_RUNS = 50


def _median_time(run: Callable[[], None], device: torch.device, repeats: int, steps: bool = False) -> float:
    """The median seconds of ``run`` over ``max(repeats, 5)`` runs after one warm-up; ``steps=True`` (a run of
    milliseconds): over at least :data:`STEP_RUNS` runs after a tenth as many warm-ups."""
    runs = max(repeats, STEP_RUNS if steps else 5)
    for _ in range(max(1, runs // 10)):
        run()  # warm-up
    return statistics.median(_timed(run, device)[0] for _ in range(runs))


def run_benchmark(s: BenchSettings) -> dict[str, Any]:
    """Run every measurement; return a JSON-able dict (see :func:`format_report`)."""
    import transformers

    s.validate()  # fields may have changed since construction
    device = torch.device(s.device)
    hf, ours = _build_models(s)
    dtype = resolve_decode_dtype(s.dtype, device)
    # Prepared once, as `llm-lab serve` does (the weights never change here); see prepare_for_decode.
    fast = prepare_for_decode(ours, dtype) if dtype != "fp32" or pays_to_prepare(ours) else ours
    gen = torch.Generator().manual_seed(s.seed)
    results: dict[str, Any] = {
        "settings": {k: v for k, v in vars(s).items() if k != "extra"},
        "throughput": [],
        "per_token": [],
    }
    results["settings"]["threads"] = torch.get_num_threads()
    results["settings"]["parameters"] = ours.num_parameters()
    results["settings"]["dtype"] = dtype
    prepared = fast if fast is not ours else prepare_for_decode(ours, dtype)
    weight_bytes = _weight_bytes(prepared)
    bandwidth = read_bandwidth(s.bandwidth_mib, max(s.repeats, 5), device)
    results["roofline"] = {
        "weight_bytes_per_token": weight_bytes,
        "read_bandwidth_bytes_per_second": bandwidth,
        "tokens_per_second": bandwidth / weight_bytes,
    }

    for batch in s.batch_sizes:
        ids = torch.randint(0, s.vocab_size, (batch, s.prompt_len), generator=gen).to(device)
        mask = torch.ones_like(ids)

        def run_ours(ids: torch.Tensor = ids) -> torch.Tensor:
            return generate(fast, ids, s.new_tokens, temperature=0).sequences

        def run_hf(ids: torch.Tensor = ids, mask: torch.Tensor = mask) -> torch.Tensor:
            with torch.inference_mode():
                return hf.generate(
                    ids, attention_mask=mask, max_new_tokens=s.new_tokens, do_sample=False, use_cache=True
                )

        run_ours(), run_hf()  # warm-up
        ours_times, hf_times = [], []
        same, agree = True, []
        for _ in range(s.repeats):
            t, a = _timed(run_ours, device)
            ours_times.append(t)
            t, b = _timed(run_hf, device)
            hf_times.append(t)
            same = same and torch.equal(a, b)
            agree.append((a[:, s.prompt_len :] == b[:, s.prompt_len :]).float().mean().item())
        tokens = batch * s.new_tokens
        ours_tps, hf_tps = tokens / statistics.median(ours_times), tokens / statistics.median(hf_times)
        floor_tps = batch / _weights_floor(ours, prepared, batch, s.repeats, device, dtype)
        kernels_tps = batch / _kernels_floor(prepared, batch, s.repeats, device)
        results["throughput"].append(
            {
                "batch": batch,
                "matmul_only_tokens_per_second": floor_tps,
                "kernels_only_tokens_per_second": kernels_tps,
                "kernels_roofline_fraction": kernels_tps / batch / results["roofline"]["tokens_per_second"],
                "ours_tokens_per_second": ours_tps,
                "hf_tokens_per_second": hf_tps,
                "ratio": ours_tps / hf_tps,
                "same_tokens": same,
                "token_agreement": min(agree),
                "roofline_fraction": ours_tps / batch / results["roofline"]["tokens_per_second"],
            }
        )

    class _Stamps(transformers.generation.streamers.BaseStreamer):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def put(self, value: torch.Tensor) -> None:
            self.stamps.append(time.perf_counter())

        def end(self) -> None:
            pass

    n = s.context_new_tokens

    def ours_gap(ids: torch.Tensor) -> float:
        stamps = []
        for chunk in stream(fast, ids, n, temperature=0):
            if chunk.token_id is not None:
                stamps.append(time.perf_counter())
        return _gap_times(stamps)

    def hf_gap(ids: torch.Tensor) -> float:
        streamer = _Stamps()
        with torch.inference_mode():
            hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, streamer=streamer)
        return _gap_times(streamer.stamps[1:])  # HF's first put() is the prompt

    prompts = {c: torch.randint(0, s.vocab_size, (1, c), generator=gen).to(device) for c in s.contexts}
    for ids in prompts.values():
        ours_gap(ids), hf_gap(ids)  # warm-up
    # Every repeat measures every context, so a change in machine load hits all of them alike; the ratios to the
    # shortest context are taken within each repeat, then their median is reported.
    gaps: dict[str, dict[int, list[float]]] = {"ours": {c: [] for c in s.contexts}, "hf": {c: [] for c in s.contexts}}
    for _ in range(s.repeats):
        for c, ids in prompts.items():
            gaps["ours"][c].append(ours_gap(ids))
            gaps["hf"][c].append(hf_gap(ids))
    first = s.contexts[0]
    for c in s.contexts:
        row: dict[str, float] = {"context": c}
        for side in ("ours", "hf"):
            row[f"{side}_ms"] = 1e3 * statistics.median(gaps[side][c])
            row[f"{side}_vs_shortest"] = statistics.median(
                g / g0 for g, g0 in zip(gaps[side][c], gaps[side][first], strict=True)
            )
        results["per_token"].append(row)
    return results


def format_report(results: dict[str, Any]) -> str:
    """The measurements as two plain-text tables."""
    s = results["settings"]
    dtype = s.get("dtype", "fp32")
    roof = results["roofline"]
    lines = [
        f"model: GPT-2 style, {plural(s['n_layer'], 'layer')}, {s['n_embd']} wide, vocab {s['vocab_size']}, "
        f"{s['parameters'] / 1e6:.1f}M parameters, ours decodes in {dtype}, HF in fp32, device {s['device']}, "
        f"{plural(s['threads'], 'thread')}; median of {plural(s['repeats'], 'run')}",
        f"roofline ({dtype}): {roof['weight_bytes_per_token'] / 1e6:.1f} MB of weights per token at a measured read "
        f"bandwidth of {roof['read_bandwidth_bytes_per_second'] / 1e9:.1f} GB/s = "
        f"{roof['tokens_per_second']:.1f} tokens/s per sequence",
        "",
        f"greedy throughput ({s['prompt_len']}-token prompt, {s['new_tokens']} new tokens, prefill included)",
        f"{'batch':>5}  {'ours tok/s':>11}  {'HF tok/s':>10}  {'ours/HF':>7}  {'same as HF':>10}  "
        f"{'matmul-only tok/s':>17}  {'ours/matmul-only':>16}  {'of roofline':>11}  {'kernels-only tok/s':>18}  "
        f"{'kernels of roofline':>19}",
    ]
    for row in results["throughput"]:
        floor = row["matmul_only_tokens_per_second"]
        same = "yes" if row["same_tokens"] else f"{100 * row['token_agreement']:.0f}%"
        lines.append(
            f"{row['batch']:>5}  {row['ours_tokens_per_second']:>11.1f}  {row['hf_tokens_per_second']:>10.1f}  "
            f"{row['ratio']:>6.2f}x  {same:>10}  {floor:>17.1f}  "
            f"{row['ours_tokens_per_second'] / floor:>15.2f}x  {100 * row['roofline_fraction']:>10.0f}%  "
            f"{row['kernels_only_tokens_per_second']:>18.1f}  {100 * row['kernels_roofline_fraction']:>18.0f}%"
        )
    lines.append(
        f"(same as HF: identical tokens, or the share of greedy tokens equal to HF's fp32 ones; matmul-only: every "
        f"linear layer once per step in {dtype} and nothing else; of roofline: ours against the weight-read roofline "
        f"above, per sequence; kernels-only: the {dtype} kernel of each product alone, on inputs already in its form, "
        "the ceiling of a step through these kernels)"
    )
    lines += [
        "",
        f"per-token decode time (batch 1, median gap between {s['context_new_tokens']} new tokens; 'vs first' is the "
        "median over repeats of the ratio to the first context)",
        f"{'context':>7}  {'ours ms':>8}  {'vs first':>8}  {'HF ms':>8}  {'vs first':>8}",
    ]
    for row in results["per_token"]:
        lines.append(
            f"{row['context']:>7}  {row['ours_ms']:>8.2f}  {row['ours_vs_shortest']:>7.2f}x  {row['hf_ms']:>8.2f}  "
            f"{row['hf_vs_shortest']:>7.2f}x"
        )
    return "\n".join(lines)
