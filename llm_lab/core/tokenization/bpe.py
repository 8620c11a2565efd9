"""``SubwordTokenizer``: byte-level BPE (GPT-2 style) that trains fast in pure Python and encodes exactly.

Encoding = split the text with the pre-tokenisation regex (GPT-2 or GPT-4 pattern), turn each piece into its UTF-8
bytes (ids 0..255 after training), then apply the learned merges by rank: repeatedly merge the adjacent pair that
was learned earliest, every occurrence left to right, until no learned pair is left. This is the merge rule of
GPT-2's ``encoder.py`` and of HF ``tokenizers``' BPE model; tiktoken applies ranks of the concatenated bytes, which
gives the same ids for vocabularies trained this way (the parity tests check all three on real text).

Pieces repeat a lot in natural text ("Ġthe"), so encoded pieces are cached in a bounded dict.

Files: GPT-2's ``vocab.json`` + ``merges.txt`` and a ``tokenizer_config.json``, read and written by
:mod:`llm_lab.core.tokenization.bpe_files`. Training: :mod:`llm_lab.core.tokenization.bpe_train`.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import regex

from llm_lab.core.tokenization.bpe_files import check_special_tokens, read_bpe_files, write_bpe_files
from llm_lab.core.tokenization.bpe_train import TextSource, bytes_counts, count_pretokens_parallel, learn_merges
from llm_lab.core.tokenization.byte_level import (
    bytes_to_text,
    check_coverage,
    compile_pattern,
    is_byte_level_spelling,
    resolve_pattern,
    text_to_bytes,
    token_from_unicode,
    token_to_unicode,
)
from llm_lab.core.tokenization.chat_tokens import chat_template_of
from llm_lab.utils.io import atomic_write_text

__all__ = ["EOT_TOKEN", "SubwordTokenizer"]

EOT_TOKEN = "<|endoftext|>"
_CACHE_MAX_ENTRIES = 200_000  # distinct pieces kept; when full the oldest half is dropped


class SubwordTokenizer:
    """Byte-level BPE tokenizer; see the module docstring for the algorithm and the file format.

    Build one with :meth:`train` or :meth:`load`; the constructor takes the learned tables directly.

    Args:
        vocab: every regular token's bytes -> id (all 256 single bytes and every merge result).
        merges: the learned merges as ``(left bytes, right bytes)``, in rank order.
        special_tokens: special-token text -> id (ids distinct from the regular tokens').
        pattern: "gpt2", "gpt4", or a custom pre-tokenisation regex for the ``regex`` package.
    """

    def __init__(
        self,
        vocab: Mapping[bytes, int],
        merges: Sequence[tuple[bytes, bytes]],
        special_tokens: Mapping[str, int] | None = None,
        pattern: str = "gpt2",
    ) -> None:
        self.pattern_name, self.pattern = resolve_pattern(pattern)
        self._split = compile_pattern(self.pattern).findall
        specials = dict(special_tokens or {})
        check_special_tokens(specials)

        missing = [b for b in range(256) if bytes([b]) not in vocab]
        if missing:
            raise ValueError(f"vocab lacks {len(missing)} of the 256 byte tokens (first: byte {missing[0]:#04x})")
        n_tokens = len(vocab) + len(specials)
        ids = sorted([*vocab.values(), *specials.values()])
        if ids != list(range(n_tokens)):
            dup = next((x for x, y in itertools.pairwise(ids) if x == y), None)
            problem = f"id {dup} is used twice" if dup is not None else "ids are not 0..N-1 without gaps"
            raise ValueError(f"token ids must be 0..{n_tokens - 1}, each used once: {problem}")

        self._token_bytes: list[bytes] = [b""] * n_tokens
        for data, i in vocab.items():
            self._token_bytes[i] = data
        for text, i in specials.items():
            self._token_bytes[i] = text_to_bytes(text)
        self._byte_ids = [vocab[bytes([b])] for b in range(256)]
        self._identity_bytes = self._byte_ids == list(range(256))

        # rank of each mergeable id pair, and the id each merge produces
        self._ranks: dict[tuple[int, int], int] = {}
        self._merge_ids: list[int] = []
        self._merges: list[tuple[bytes, bytes]] = []
        produced = {bytes([b]) for b in range(256)}
        for rank, (left, right) in enumerate(merges):
            for part in (left, right):
                if part not in produced:
                    raise ValueError(f"merge {rank} ({left!r}, {right!r}): {part!r} is neither a byte nor an earlier "
                                     "merge's result")
            merged = left + right
            if merged not in vocab:
                raise ValueError(f"merge {rank} produces {merged!r}, which is not in the vocab")
            produced.add(merged)
            key = (vocab[left], vocab[right])
            if key in self._ranks:
                raise ValueError(f"merge {rank} ({left!r}, {right!r}) repeats merge {self._ranks[key]}")
            self._ranks[key] = rank
            self._merge_ids.append(vocab[merged])
            self._merges.append((left, right))
        orphans = [data for data in vocab if data not in produced]
        if orphans:
            raise ValueError(f"vocab token {orphans[0]!r} (id {vocab[orphans[0]]}) is neither a byte nor produced by "
                             "a merge")
        clash = [s for s in specials if is_byte_level_spelling(s) and token_from_unicode(s, "special token") in vocab]
        if clash:
            raise ValueError(f"special token {clash[0]!r} collides with a regular token of the same name in vocab.json")

        self._vocab: dict[bytes, int] = dict(vocab)
        self._special_tokens = specials
        self._special_split_cache: dict[frozenset[str], Any] = {}
        self._cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ training

    @classmethod
    def train(
        cls,
        texts: TextSource,
        vocab_size: int,
        special_tokens: Sequence[str] = (EOT_TOKEN,),
        pattern: str = "gpt2",
        min_frequency: int = 2,
        show_progress: bool | None = None,
        workers: int = 1,
    ) -> SubwordTokenizer:
        """Learn a byte-level BPE vocabulary.

        Args:
            texts: a string (one document), a ``pathlib.Path`` (a UTF-8 file, streamed), or an iterable of strings
                and paths. Special-token text inside them is cut out and never learned.
            vocab_size: total ids wanted: 256 bytes + merges + special tokens. Training may stop with fewer merges
                when no pair occurs ``min_frequency`` times.
            special_tokens: texts that get one id each, after the merges. Default ``("<|endoftext|>",)`` (GPT-2's
                document separator, which the data pipeline and packages use); pass ``()`` for none.
            pattern: "gpt2" (default), "gpt4" (cl100k), or a custom regex.
            min_frequency: smallest count a pair needs to be merged (default 2: a pair seen once is noise).
            show_progress: tqdm bar over the merges; None shows it on a terminal only, after a second.
            workers: processes that count the pre-tokens (the counts, and so the result, do not depend on it).

        Returns:
            The trained tokenizer. Ties between pairs of equal count go to the lexicographically smallest
            (left bytes, right bytes), so the same input always gives the same merges.
        """
        specials = check_special_tokens(special_tokens)
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
            raise ValueError(f"vocab_size must be an int, got {vocab_size!r}")
        if vocab_size < 256 + len(specials):
            raise ValueError(
                f"vocab_size={vocab_size} is too small: byte-level BPE needs at least 256 byte tokens + "
                f"{len(specials)} special token(s) = {256 + len(specials)}"
            )
        if not isinstance(min_frequency, int) or min_frequency < 0:
            raise ValueError(f"min_frequency must be a non-negative int, got {min_frequency!r}")
        _, pattern_regex = resolve_pattern(pattern)

        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 256:
            raise ValueError(f"workers must be an int from 1 to 256, got {workers!r}")
        pretokens = count_pretokens_parallel(texts, pattern_regex, specials, workers)
        if not pretokens:
            raise ValueError("the training corpus is empty: no text to learn from (after removing special tokens)")
        # A regular token spelled like a special token in vocab.json would give that file two entries of one name.
        forbidden = frozenset(token_from_unicode(s, "special token") for s in specials if is_byte_level_spelling(s))
        merges = learn_merges(bytes_counts(pretokens), vocab_size - 256 - len(specials), min_frequency=min_frequency,
                              forbidden=forbidden, show_progress=show_progress)

        token_bytes = [bytes([b]) for b in range(256)]
        merge_pairs: list[tuple[bytes, bytes]] = []
        for left, right, new_id in merges:
            pair = (token_bytes[left], token_bytes[right])
            merge_pairs.append(pair)
            if new_id == len(token_bytes):
                token_bytes.append(pair[0] + pair[1])
        vocab = {data: i for i, data in enumerate(token_bytes)}
        special_ids = {s: len(token_bytes) + k for k, s in enumerate(specials)}
        return cls(vocab, merge_pairs, special_ids, pattern)

    # ------------------------------------------------------------------ properties

    @property
    def vocab_size(self) -> int:
        """Number of ids: bytes + merges + special tokens (the model's embedding rows)."""
        return len(self._token_bytes)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_tokens)

    @property
    def eot_token_id(self) -> int | None:
        """Id of ``<|endoftext|>`` when this tokenizer has it."""
        return self._special_tokens.get(EOT_TOKEN)

    @property
    def chat_template(self) -> str | None:
        """The chat format's Jinja template when this tokenizer holds the chat tokens, else None."""
        return chat_template_of(self._special_tokens)

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        """The learned merges as (left bytes, right bytes), in rank order."""
        return list(self._merges)

    @property
    def vocab(self) -> dict[bytes, int]:
        """Regular tokens' bytes -> id (special tokens are in :attr:`special_tokens`)."""
        return dict(self._vocab)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one id (a special token's UTF-8 text)."""
        self._check_ids([token_id])
        return self._token_bytes[token_id]

    def __repr__(self) -> str:
        return (f"SubwordTokenizer(vocab_size={self.vocab_size}, merges={len(self._merges)}, "
                f"pattern={self.pattern_name!r}, special_tokens={self._special_tokens})")

    # ------------------------------------------------------------------ encoding

    def _encode_piece(self, piece: str) -> list[int]:
        data = text_to_bytes(piece)
        ids = list(data) if self._identity_bytes else [self._byte_ids[b] for b in data]
        if len(ids) > 1:
            # Merge the lowest-rank adjacent pair, leftmost first, one occurrence at a time; only the two
            # neighbouring pair ranks change after a merge. A merged pair's new neighbours always rank later, so
            # this equals "merge every occurrence of the best pair left to right" (GPT-2, HF tokenizers).
            get = self._ranks.get
            merge_ids = self._merge_ids
            none = len(merge_ids)  # larger than every rank: "no merge here"
            pair_ranks = [get(p, none) for p in zip(ids, ids[1:], strict=False)]
            while True:
                best = min(pair_ranks)
                if best == none:
                    break
                i = pair_ranks.index(best)
                ids[i] = merge_ids[best]
                del ids[i + 1]
                del pair_ranks[i]
                if i > 0:
                    pair_ranks[i - 1] = get((ids[i - 1], ids[i]), none)
                if i < len(pair_ranks):
                    pair_ranks[i] = get((ids[i], ids[i + 1]), none)
                elif not pair_ranks:
                    break
        if len(self._cache) >= _CACHE_MAX_ENTRIES:
            # Bounded memory on endless streams of new pieces: drop the oldest half (dicts keep insertion order).
            for key in list(itertools.islice(self._cache, _CACHE_MAX_ENTRIES // 2)):
                self._cache.pop(key, None)  # pop: another thread may have evicted it already
        self._cache[piece] = ids
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        pieces = self._split(text)
        if self.pattern_name == "custom":
            check_coverage(self.pattern, text, pieces)
        cache = self._cache
        try:  # fast path: every piece already cached
            return list(itertools.chain.from_iterable(map(cache.__getitem__, pieces)))
        except KeyError:
            pass
        get = cache.get
        encode_piece = self._encode_piece
        out: list[int] = []
        for piece in pieces:
            ids = get(piece)
            out += encode_piece(piece) if ids is None else ids
        return out

    def _special_splitter(self, allowed: frozenset[str]):
        splitter = self._special_split_cache.get(allowed)
        if splitter is None:
            alternatives = "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True))
            splitter = regex.compile(f"({alternatives})").split
            self._special_split_cache[allowed] = splitter
        return splitter

    def _allowed(self, allowed_special: Literal["all", "none"] | Collection[str]) -> frozenset[str]:
        if allowed_special == "all":
            return frozenset(self._special_tokens)
        if allowed_special == "none" or not allowed_special:
            return frozenset()
        if isinstance(allowed_special, str):
            raise ValueError(f"allowed_special must be 'all', 'none' or a set of special tokens, got "
                             f"{allowed_special!r}")
        allowed = frozenset(allowed_special)
        unknown = sorted(allowed - self._special_tokens.keys())
        if unknown:
            raise ValueError(f"allowed_special names unknown special tokens {unknown}; this tokenizer has "
                             f"{sorted(self._special_tokens)}")
        return allowed

    def encode(self, text: str, allowed_special: Literal["all", "none"] | Collection[str] = "none") -> list[int]:
        """Token ids of ``text``.

        Args:
            text: any string (lone surrogates included; they round-trip through ``decode``).
            allowed_special: which special-token texts in ``text`` become their single id: "none" (default: they
                are encoded as ordinary text, so user input cannot inject a document separator), "all", or a set.
        """
        if not isinstance(text, str):
            raise ValueError(f"encode takes a str, got {type(text).__name__}")
        allowed = self._allowed(allowed_special)
        if not allowed:
            return self._encode_ordinary(text)
        out: list[int] = []
        for k, part in enumerate(self._special_splitter(allowed)(text)):
            if k % 2:  # split() with a capture group alternates text, special, text, ...
                out.append(self._special_tokens[part])
            elif part:
                out += self._encode_ordinary(part)
        return out

    def encode_batch(
        self, texts: Iterable[str], allowed_special: Literal["all", "none"] | Collection[str] = "none"
    ) -> list[list[int]]:
        """:meth:`encode` for each text (the piece cache is shared across the batch)."""
        return [self.encode(t, allowed_special) for t in texts]

    def clear_cache(self) -> None:
        """Forget cached piece encodings (for cold-start benchmarks; results never depend on the cache)."""
        self._cache.clear()

    # ------------------------------------------------------------------ decoding

    def _check_ids(self, ids: Sequence[int]) -> None:
        n = len(self._token_bytes)
        bad = next((i for i in ids if not 0 <= i < n), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is out of range for a vocabulary of {n} ids (0..{n - 1})")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The concatenated bytes of ``ids`` (special tokens as their UTF-8 text); never fails on cut characters."""
        ids = ids if isinstance(ids, list) else list(ids)
        try:
            if not ids or min(ids) >= 0:
                return b"".join([self._token_bytes[i] for i in ids])
        except (IndexError, TypeError):
            pass
        self._check_ids([int(i) for i in ids])
        return b"".join([self._token_bytes[int(i)] for i in ids])

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Text of ``ids``. ``errors`` ("replace", "strict", "ignore", "backslashreplace") applies to byte sequences
        that are not valid UTF-8, e.g. ids that cut a multi-byte character; ``decode(encode(s)) == s`` always."""
        return bytes_to_text(self.decode_bytes(ids), errors)

    # ------------------------------------------------------------------ files

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` into ``directory`` (atomically)."""
        return write_bpe_files(self, directory)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SubwordTokenizer:
        """Read a tokenizer written by :meth:`save`, or GPT-2-format ``vocab.json`` + ``merges.txt``.

        Without ``tokenizer_config.json`` the GPT-2 pattern is used and ``<|endoftext|>`` is special if present.
        Every inconsistency is a ``ValueError`` naming the file (and line for ``merges.txt``).
        """
        vocab, merges, specials, pattern = read_bpe_files(directory, default_specials=(EOT_TOKEN,))
        try:
            return cls(vocab, merges, specials, pattern)
        except ValueError as exc:
            raise ValueError(f"{Path(directory)}: {exc}") from exc

    # ------------------------------------------------------------------ interop

    def to_tiktoken(self, name: str = "llm_lab_bpe"):
        """A ``tiktoken.Encoding`` with this tokenizer's ranks (= ids), pattern and special tokens.

        Requires ``tiktoken`` (a dev dependency). tiktoken merges by the rank of the concatenated bytes; for
        vocabularies trained by :meth:`train` that gives the same ids as :meth:`encode`.
        """
        import tiktoken

        ranks = {data: i for data, i in self._vocab.items()}
        return tiktoken.Encoding(name=name, pat_str=self.pattern, mergeable_ranks=ranks,
                                 special_tokens=dict(self._special_tokens))

    def hf_tokenizer_json(self) -> dict[str, Any]:
        """The HF ``tokenizers`` ``tokenizer.json`` content (a dict), GPT-2 style: byte-level BPE, no prefix space.

        The GPT-2 pattern uses the ``ByteLevel`` pre-tokenizer's built-in regex (as GPT-2's own tokenizer.json);
        other patterns use a ``Split`` with the regex followed by ``ByteLevel`` without its regex.
        """
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        if self.pattern_name == "gpt2":
            pre_tokenizer: dict[str, Any] = byte_level
        else:
            pre_tokenizer = {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": self.pattern}, "behavior": "Isolated", "invert": False},
                {**byte_level, "use_regex": False},
            ]}
        vocab = {token_to_unicode(data): i for data, i in sorted(self._vocab.items(), key=lambda kv: kv[1])}
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True}
                for text, i in sorted(self._special_tokens.items(), key=lambda kv: kv[1])
            ],
            "normalizer": None,
            "pre_tokenizer": pre_tokenizer,
            # GPT-2's settings: no BOS/EOS added, offsets not trimmed; the decoder maps byte characters back.
            "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                               "use_regex": True},
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "model": {
                "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                "vocab": vocab,
                # "left right" strings (the long-standing format every tokenizers version reads); byte-level
                # token strings never contain a space, so the split is unambiguous.
                "merges": [f"{token_to_unicode(left)} {token_to_unicode(right)}" for left, right in self._merges],
            },
        }

    def to_hf_tokenizer_json(self, path: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` for HF ``tokenizers.Tokenizer.from_file`` / ``PreTrainedTokenizerFast``.

        ``path`` is the file to write, or a directory to write ``tokenizer.json`` into. Returns the file path.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        atomic_write_text(path, json.dumps(self.hf_tokenizer_json(), ensure_ascii=False, indent=2) + "\n")
        return path

