"""``MiniGPTConfig``: the one validated description of a MiniGPT model.

Every architectural choice is a field here; variants are picked by name through small registries in the
model modules (see ``llm_lab.core.model``). The JSON form is ``config_to_dict`` (``dataclasses.asdict``, with the
two fields below as given), and loading rejects unknown keys by name (``llm_lab.utils.config_loader``).

Two fields may be left out and worked out from the others: ``n_kv_head`` (default: ``n_head``, or 1 for
``attention_type="mqa"``) and ``attention_type`` (from the head counts). The instance keeps what the caller
gave (``None`` for "work it out", see :class:`GivenOrDerived`) and reading the attribute resolves it, so JSON
stores ``null`` and a ``--set model.n_head=8`` override re-derives both like any other property. Files that hold
the resolved values (written before this rule, or with ``dataclasses.asdict``) load back to an equal config, both
values checked against the head counts; since such a file names ``n_kv_head``, that count stays fixed under a
later ``n_head`` override (drop the two keys, or set them to null, to have them follow).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

PosEncoding = Literal["learned", "sinusoidal", "rope", "alibi", "none"]
NormType = Literal["layernorm", "rmsnorm"]
MLPType = Literal["gelu", "gelu_tanh", "swiglu", "relu2"]
AttentionType = Literal["mha", "gqa", "mqa"]
AttnImpl = Literal["sdpa", "reference"]

POS_ENCODINGS: tuple[str, ...] = ("learned", "sinusoidal", "rope", "alibi", "none")
NORM_TYPES: tuple[str, ...] = ("layernorm", "rmsnorm")
MLP_TYPES: tuple[str, ...] = ("gelu", "gelu_tanh", "swiglu", "relu2")
ATTENTION_TYPES: tuple[str, ...] = ("mha", "gqa", "mqa")
ATTN_IMPLS: tuple[str, ...] = ("sdpa", "reference")

# Encodings that can run past the training context: they have no learned table of positions.
EXTRAPOLATING_POS_ENCODINGS: tuple[str, ...] = ("sinusoidal", "rope", "alibi", "none")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of: {', '.join(choices)}")


class GivenOrDerived:
    """A dataclass field that stores what the caller gave (``None`` = "derive it") and reads back the resolved value.

    Why a descriptor rather than a plain field rewritten in ``__post_init__``: a rewritten field forgets that it
    was derived, so ``MiniGPTConfig(n_head=4)`` overridden with ``n_head=2`` would keep four KV heads. Here the
    given value stays in the instance ``__dict__`` (what :func:`~llm_lab.utils.config_loader.apply_overrides`
    rebuilds from) and the attribute is a property computed by ``derive(config, given)``. ``dataclasses.replace``
    reads the resolved value back and so freezes it; ``llm_lab.utils.config_loader.replace_config`` does not.
    """

    def __init__(self, derive: Callable[[Any, Any], Any]) -> None:
        self._derive = derive
        self._name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:  # class access: the dataclass reads this as the field's default
            return None
        return self._derive(obj, obj.__dict__.get(self._name))

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self._name] = value


def _attention_type_for(n_head: int, n_kv_head: int) -> str:
    if n_kv_head == n_head:
        return "mha"
    if n_kv_head == 1:
        return "mqa"
    return "gqa"


def _derive_n_kv_head(config: MiniGPTConfig, given: int | None) -> int:
    if given is not None:
        return given
    return 1 if config.__dict__.get("attention_type") == "mqa" else config.n_head


def _derive_attention_type(config: MiniGPTConfig, given: str | None) -> str:
    return given if given is not None else _attention_type_for(config.n_head, config.n_kv_head)


@dataclass
class MiniGPTConfig:
    """Architecture of a decoder-only Transformer.

    Attributes:
        vocab_size: number of token ids.
        context_length: the training context (and the size of the learned position table).
        n_layer: Transformer blocks.
        n_head: query heads.
        n_kv_head: key/value heads; ``None`` means ``n_head`` (MHA), or 1 when ``attention_type="mqa"``. ``1`` is
            MQA, anything between is GQA. Reads back resolved (never ``None``).
        n_embd: model width; must be divisible by ``n_head``.
        mlp_hidden: MLP inner width; ``None`` means ``4 * n_embd``.
        dropout: dropout on attention weights, residual branches and embeddings (0 disables it).
        bias: biases in linear layers and LayerNorm (GPT-2 style) or none (Llama style).
        pos_encoding: ``learned`` | ``sinusoidal`` | ``rope`` | ``alibi`` | ``none``.
        rope_theta: RoPE base frequency.
        norm: ``layernorm`` | ``rmsnorm``.
        norm_eps: epsilon of the norms.
        mlp: ``gelu`` (exact erf) | ``gelu_tanh`` (GPT-2's approximation) | ``swiglu`` | ``relu2`` (squared ReLU).
        qk_norm: normalise queries and keys per head before attention.
        tie_embeddings: share the token embedding with the output projection.
        init_std: standard deviation of the normal weight init (see ``init_weights``).
        attention_type: ``mha`` | ``gqa`` | ``mqa``; ``None`` infers it from ``n_kv_head``. Must agree with it.
            Reads back resolved (never ``None``).
        max_seq_len: the longest sequence the model accepts; ``None`` means ``context_length``. Longer than the
            context only for encodings without a learned table (length extrapolation).
        attn_impl: ``sdpa`` (``scaled_dot_product_attention``) or ``reference`` (plain softmax, for tests).
        zero_init_residual: initialise the residual output projections (attention ``o_proj``, MLP
            ``down_proj``) at zero, so every block starts as the identity (the GPT speedruns' init).
        zero_init_head: initialise the output head at zero (uniform predictions at step 0); needs
            ``tie_embeddings=False``.
        bigram_embedding: add an embedding of the previous token to the residual stream
            (:class:`llm_lab.core.model.embeddings.PreviousTokenEmbedding`).
        value_embeddings: add a per-layer embedding of the token to each layer's attention values
            (:class:`llm_lab.core.model.embeddings.ValueEmbeddings`).
    """

    json_section: ClassVar[str] = "model"

    vocab_size: int = 65
    context_length: int = 256
    n_layer: int = 6
    n_head: int = 6
    n_kv_head: int | None = GivenOrDerived(_derive_n_kv_head)  # type: ignore[assignment]
    n_embd: int = 384
    mlp_hidden: int | None = None
    dropout: float = 0.0
    bias: bool = True
    pos_encoding: PosEncoding = "learned"
    rope_theta: float = 10000.0
    norm: NormType = "layernorm"
    norm_eps: float = 1e-5
    mlp: MLPType = "gelu"
    qk_norm: bool = False
    tie_embeddings: bool = True
    init_std: float = 0.02
    attention_type: AttentionType | None = GivenOrDerived(_derive_attention_type)  # type: ignore[assignment]
    max_seq_len: int | None = None
    attn_impl: AttnImpl = "sdpa"
    zero_init_residual: bool = False
    zero_init_head: bool = False
    bigram_embedding: bool = False
    value_embeddings: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        given_kv_head, given_type = self.__dict__["n_kv_head"], self.__dict__["attention_type"]
        for name in ("n_kv_head", "mlp_hidden", "max_seq_len"):
            value = given_kv_head if name == "n_kv_head" else getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"{name} must be a positive integer or null, got {value!r}")
        # Python callers bypass the JSON loader's type checks: bias="false" would be truthy, a string eps a TypeError.
        for name in (
            "bias",
            "qk_norm",
            "tie_embeddings",
            "zero_init_residual",
            "zero_init_head",
            "bigram_embedding",
            "value_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        for name in ("dropout", "rope_theta", "norm_eps", "init_std"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        _check_choice("pos_encoding", self.pos_encoding, POS_ENCODINGS)
        _check_choice("norm", self.norm, NORM_TYPES)
        _check_choice("mlp", self.mlp, MLP_TYPES)
        _check_choice("attn_impl", self.attn_impl, ATTN_IMPLS)
        if given_type is not None:
            _check_choice("attention_type", given_type, ATTENTION_TYPES)
        if self.zero_init_head and self.tie_embeddings:
            raise ValueError(
                "zero_init_head=True needs tie_embeddings=False (a zero head tied to the token embedding would zero "
                "the input too)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps must be positive, got {self.norm_eps}")
        if self.init_std <= 0:
            raise ValueError(f"init_std must be positive, got {self.init_std}")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta must be positive, got {self.rope_theta}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"try n_embd={self.n_head * max(1, round(self.n_embd / self.n_head))}"
            )

        # Key/value heads and the attention type must tell the same story.
        if given_kv_head is None and given_type == "gqa":
            raise ValueError("attention_type='gqa' needs n_kv_head (a divisor of n_head between 1 and n_head)")
        if self.n_kv_head > self.n_head or self.n_head % self.n_kv_head != 0:
            raise ValueError(
                f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head}); "
                "each key/value head serves a whole group of query heads"
            )
        inferred = _attention_type_for(self.n_head, self.n_kv_head)
        if given_type is not None and given_type != inferred and not (
            self.n_head == 1 and given_type in ("mha", "mqa")
        ):
            raise ValueError(
                f"attention_type={given_type!r} disagrees with n_kv_head={self.n_kv_head} "
                f"and n_head={self.n_head} (that is {inferred!r}); mha needs n_kv_head == n_head, mqa needs "
                "n_kv_head == 1, gqa anything in between"
            )

        if self.pos_encoding == "rope" and self.head_dim % 2 != 0:
            raise ValueError(
                f"RoPE rotates pairs of channels, so the head size must be even; "
                f"n_embd / n_head = {self.head_dim} (change n_embd or n_head)"
            )
        if self.pos_encoding == "sinusoidal" and self.n_embd % 2 != 0:
            raise ValueError(f"sinusoidal positions need an even n_embd, got {self.n_embd}")
        if self.max_seq_len is not None and self.max_seq_len != self.context_length:
            if self.max_seq_len < self.context_length:
                raise ValueError(
                    f"max_seq_len ({self.max_seq_len}) must be at least context_length ({self.context_length})"
                )
            if self.pos_encoding not in EXTRAPOLATING_POS_ENCODINGS:
                raise ValueError(
                    f"max_seq_len > context_length needs a position encoding that extrapolates "
                    f"({', '.join(EXTRAPOLATING_POS_ENCODINGS)}); learned positions have only "
                    f"{self.context_length} entries"
                )

    # Derived values: properties, never stored.
    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def hidden_dim(self) -> int:
        """Inner width of the MLP."""
        return self.mlp_hidden if self.mlp_hidden is not None else 4 * self.n_embd

    @property
    def max_positions(self) -> int:
        """Longest sequence (prompt + generated) the model accepts."""
        return self.max_seq_len if self.max_seq_len is not None else self.context_length

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head."""
        return self.n_head // self.n_kv_head
