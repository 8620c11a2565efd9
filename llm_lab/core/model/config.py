"""``MiniGPTConfig``: the one validated description of a MiniGPT model.

Every architectural choice is a field here; variants are picked by name through small registries in the
model modules (``NORMS``, ``POSITIONAL_ENCODINGS``, ``MLPS``, ``ATTENTION_IMPLS``, ``ATTENTION_TYPES``). Those
registries are the only lists of the names: the fields' ``Literal`` types (what JSON loading checks), the validation
here and its messages are built from them, and what depends on a variant (a shape rule, whether it runs past the
context) is asked of its class. The JSON form is ``config_to_dict`` (``dataclasses.asdict``, with the
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

# The registries do not import this module at run time (only for type hints), so there is no import cycle.
from llm_lab.core.model.attention import ATTENTION_IMPLS
from llm_lab.core.model.attention import ATTENTION_TYPES as _ATTENTION_TYPE_LAYOUTS
from llm_lab.core.model.mlp import MLPS
from llm_lab.core.model.norms import NORMS
from llm_lab.core.model.positional import POSITIONAL_ENCODINGS
from llm_lab.core.model.registry import check_choice

# The names as tuples, in registry order (public: the studies, the CLI and the tests iterate them).
POS_ENCODINGS: tuple[str, ...] = tuple(POSITIONAL_ENCODINGS)
NORM_TYPES: tuple[str, ...] = tuple(NORMS)
MLP_TYPES: tuple[str, ...] = tuple(MLPS)
ATTENTION_TYPES: tuple[str, ...] = tuple(_ATTENTION_TYPE_LAYOUTS)
ATTN_IMPLS: tuple[str, ...] = tuple(ATTENTION_IMPLS)

# Encodings that can run past the training context, as their classes declare (``extrapolates``).
EXTRAPOLATING_POS_ENCODINGS: tuple[str, ...] = tuple(
    name for name, encoding in POSITIONAL_ENCODINGS.items() if encoding.extrapolates
)

# The field types, built from the same registries: ``llm_lab.utils.config_loader`` checks JSON values against them.
PosEncoding = Literal[POS_ENCODINGS]  # type: ignore[valid-type]
NormType = Literal[NORM_TYPES]  # type: ignore[valid-type]
MLPType = Literal[MLP_TYPES]  # type: ignore[valid-type]
AttentionType = Literal[ATTENTION_TYPES]  # type: ignore[valid-type]
AttnImpl = Literal[ATTN_IMPLS]  # type: ignore[valid-type]


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
        pos_encoding: a key of ``POSITIONAL_ENCODINGS`` (``llm_lab.core.model.positional``).
        rope_theta: RoPE base frequency.
        norm: a key of ``NORMS`` (``llm_lab.core.model.norms``).
        norm_eps: epsilon of the norms.
        mlp: a key of ``MLPS`` (``llm_lab.core.model.mlp``).
        qk_norm: normalise queries and keys per head before attention.
        tie_embeddings: share the token embedding with the output projection.
        init_std: standard deviation of the normal weight init (see ``init_weights``).
        attention_type: a key of ``ATTENTION_TYPES`` (``mha``, ``gqa``, ``mqa``; ``llm_lab.core.model.attention``);
            ``None`` infers it from ``n_kv_head``. Must agree with it.
            Reads back resolved (never ``None``).
        max_seq_len: the longest sequence the model accepts; ``None`` means ``context_length``. Longer than the
            context only for encodings that extrapolate (:attr:`extrapolates`).
        attn_impl: a key of ``ATTENTION_IMPLS`` (``llm_lab.core.model.attention``); ``auto`` picks the fastest
            kernel for each pass.
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
    #: Fields that choose how the model is computed, not what it computes (the same weights give the same values
    #: either way): resuming a run may name another one (``llm_lab.core.train.run_config.resolve_run_config``).
    execution_fields: ClassVar[tuple[str, ...]] = ("attn_impl",)

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
    attn_impl: AttnImpl = "auto"
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
        check_choice("pos_encoding", self.pos_encoding, POSITIONAL_ENCODINGS)
        check_choice("norm", self.norm, NORMS)
        check_choice("mlp", self.mlp, MLPS)
        check_choice("attn_impl", self.attn_impl, ATTENTION_IMPLS)
        if given_type is not None:
            check_choice("attention_type", given_type, _ATTENTION_TYPE_LAYOUTS)
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

        POSITIONAL_ENCODINGS[self.pos_encoding].check_config(self)  # its shape rules (RoPE: an even head size)
        if self.max_seq_len is not None and self.max_seq_len != self.context_length:
            if self.max_seq_len < self.context_length:
                raise ValueError(
                    f"max_seq_len ({self.max_seq_len}) must be at least context_length ({self.context_length})"
                )
            if not self.extrapolates:
                raise ValueError(
                    f"max_seq_len > context_length needs a position encoding that extrapolates "
                    f"({', '.join(EXTRAPOLATING_POS_ENCODINGS)}); {self.pos_encoding} positions have only "
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
    def extrapolates(self) -> bool:
        """Whether the positional encoding runs past ``context_length`` (its class declares it: no position table)."""
        return POSITIONAL_ENCODINGS[self.pos_encoding].extrapolates

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head."""
        return self.n_head // self.n_kv_head
