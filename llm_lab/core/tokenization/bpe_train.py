"""Byte-level BPE training: count distinct pre-tokens once, then merge with incremental pair counts.

The algorithm (cost grows with the number of *distinct* pre-tokens, not with the corpus size):

1. Split every text with the pre-tokenisation regex (special tokens are cut out first and never learned) and count
   each distinct pre-token once: ``{"Ġthe": 27000, ...}``. Files are streamed in blocks.
2. Turn each distinct pre-token into a list of byte ids, weighted by its count. Keep
   ``pair_counts[(a, b)]`` (weighted occurrences) and ``where[(a, b)]`` (indices of the words that contain it).
3. Repeatedly pop the most frequent pair from a max-heap, merge it inside the words listed in ``where`` only, and
   update the counts of the pairs those words lose and gain. Counts only ever drop for existing pairs, so the heap
   is updated lazily: a popped entry whose count is out of date is pushed back with the current count.

Ties: among pairs with the same count the heap pops the smallest ``(left bytes, right bytes)`` in lexicographic
byte order, so training is deterministic and independent of dict or file order. (HF ``tokenizers`` breaks ties by
its internal pair ids; tiktoken's educational trainer and minbpe take the first pair seen; all are "some fixed
order", ours is the one that depends only on the bytes.)

Should two different merge paths ever produce the same bytes, the later merge reuses the existing token's id (as
HF ``tokenizers`` does), so the vocabulary never holds two tokens with the same bytes; greedy left-to-right merging
makes this rare (it did not happen on any corpus in the tests). A merge
whose bytes would spell a special token is skipped, so ``vocab.json`` never has two entries with one name.
"""

from __future__ import annotations

import heapq
import inspect
import logging
import os
import sys
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import regex
from tqdm.auto import tqdm

from llm_lab.core.tokenization.byte_level import PATTERNS, check_coverage, compile_pattern, text_to_bytes
from llm_lab.utils.parallel import map_in_order, worker_processes

__all__ = ["count_pretokens", "count_pretokens_parallel", "iter_text_blocks", "learn_merges"]

logger = logging.getLogger(__name__)

TextSource = str | os.PathLike | Iterable[str | os.PathLike]
_BLOCK_CHARS = 1 << 20  # characters read from a file at a time when streaming


# Safe places to cut a file into blocks for the built-in patterns, searched from the end ((?r)): a space between two
# letters (cut before the space), or a lone newline (no whitespace before it) followed by a letter (cut after the
# newline). There no GPT-2/GPT-4 match spans the cut and none before it depends on what follows: a letter run ends,
# " word" starts; the newline is a piece alone or glued to the punctuation before it, as in the whole text.
_SAFE_CUT = regex.compile(r"(?r)(?<=\p{L}) (?=\p{L})|(?<=\S)\n(?=\p{L})")


def _safe_cut(block: str) -> int:
    """Index of the last safe cut point in ``block`` (0 if none): the text before it and the text from it on
    pre-tokenise exactly as they would inside the whole file."""
    match = _SAFE_CUT.search(block)
    if match is None:
        return 0
    return match.end() if match.group() == "\n" else match.start()  # the newline ends its block, the space starts one


def _iter_file(path: Path, streamable: bool) -> Iterator[str]:
    try:
        # newline="" keeps CRLF as it is in the file; the tokenizer must see the real bytes.
        with open(path, encoding="utf-8", newline="") as f:
            if not streamable:
                yield f.read()
                return
            carry = ""
            while block := f.read(_BLOCK_CHARS):
                block = carry + block
                cut = _safe_cut(block)
                if cut == 0:  # no safe boundary yet: keep reading
                    carry = block
                    continue
                yield block[:cut]
                carry = block[cut:]
            if carry:
                yield carry
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not valid UTF-8 at byte {exc.start}: {exc.reason}") from exc


def _user_stacklevel() -> int:
    """The ``stacklevel`` of a warning raised here that names the first caller outside the ``llm_lab`` package."""
    package = str(Path(__file__).resolve().parents[2])
    frame, level = inspect.currentframe(), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package):
        frame, level = frame.f_back, level + 1
    return max(level - 1, 1)


def iter_text_blocks(texts: TextSource, pattern_regex: str) -> Iterator[str]:
    """Yield blocks of text that can be pre-tokenised independently.

    ``texts`` is a string (one document), a path (a file, streamed in blocks), or an iterable of strings and paths
    (each one a document). A plain ``str`` is always text, never a file name: pass ``pathlib.Path`` for files.
    Files are streamed only for the built-in patterns, where a safe cut point is known; a custom pattern reads each
    file whole.
    """
    streamable = pattern_regex in PATTERNS.values()
    items: Iterable[str | os.PathLike] = [texts] if isinstance(texts, str | os.PathLike) else texts
    if isinstance(items, bytes | bytearray):
        raise ValueError("texts must be str, a pathlib.Path, or an iterable of them; got bytes (decode them first)")
    for item in items:
        if isinstance(item, str):
            # A short one-line string naming a file is almost surely meant as that file: say so rather than
            # silently learning a vocabulary from the file name.
            if len(item) < 4096 and "\n" not in item and os.path.isfile(item):
                warnings.warn(
                    f"training on the text {item!r}, which is also the name of a file; pass pathlib.Path({item!r}) "
                    "to train on the file's contents",
                    stacklevel=_user_stacklevel(),  # the caller of SubwordTokenizer.train
                )
            yield item
        elif isinstance(item, os.PathLike):
            path = Path(item)
            if not path.is_file():
                raise FileNotFoundError(f"training file not found: {path}")
            yield from _iter_file(path, streamable)
        else:
            raise ValueError(f"texts must hold str or pathlib.Path items, got {type(item).__name__}")


class _PretokenCounter:
    """Counts the pre-tokens of text blocks; special-token text is cut out first and not counted."""

    def __init__(self, pattern_regex: str, special_tokens: Iterable[str] = ()) -> None:
        findall = compile_pattern(pattern_regex).findall
        if pattern_regex not in PATTERNS.values():
            def split(text: str) -> list[str]:
                pieces = findall(text)
                check_coverage(pattern_regex, text, pieces)
                return pieces
        else:
            split = findall
        self._split = split
        specials = sorted(set(special_tokens), key=len, reverse=True)
        self._special_split = compile_pattern("|".join(map(regex.escape, specials))).split if specials else None

    def __call__(self, blocks: Iterable[str]) -> Counter[str]:
        counts: Counter[str] = Counter()
        for block in blocks:
            if self._special_split is None:
                counts.update(self._split(block))
            else:
                for segment in self._special_split(block):
                    counts.update(self._split(segment))
        return counts


def count_pretokens(texts: TextSource, pattern_regex: str, special_tokens: Iterable[str] = ()) -> Counter[str]:
    """Count each distinct pre-token of ``texts``; special-token text is cut out first and not counted."""
    return _PretokenCounter(pattern_regex, special_tokens)(iter_text_blocks(texts, pattern_regex))


_worker_counter: _PretokenCounter | None = None
_PARALLEL_BATCH_CHARS = 1 << 22  # characters per task: few tasks, so summing their counts stays cheap


def _start_counter(counter: _PretokenCounter) -> None:
    global _worker_counter
    _worker_counter = counter


def _count_in_worker(blocks: list[str]) -> Counter[str]:
    assert _worker_counter is not None
    return _worker_counter(blocks)


def _batched_blocks(blocks: Iterable[str], batch_chars: int) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for block in blocks:
        batch.append(block)
        size += len(block)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def count_pretokens_parallel(
    texts: TextSource, pattern_regex: str, special_tokens: Iterable[str] = (), workers: int = 2
) -> Counter[str]:
    """:func:`count_pretokens` in ``workers`` processes: the same counts, in about ``1 / workers`` of the time.

    Blocks (read in this process, as :func:`iter_text_blocks` cuts them) go to the workers a few MB at a time;
    each returns the counts of its share and they are summed here. At most ``2 * workers`` shares are in flight,
    so memory stays bounded whatever the corpus size.
    """
    counter = _PretokenCounter(pattern_regex, special_tokens)
    if workers <= 1:
        return counter(iter_text_blocks(texts, pattern_regex))
    pool = worker_processes(workers, _start_counter, (counter,))
    shares = _batched_blocks(iter_text_blocks(texts, pattern_regex), _PARALLEL_BATCH_CHARS)
    counts: Counter[str] = Counter()
    for part in map_in_order(pool, _count_in_worker, shares, 2 * workers):
        counts.update(part)
    return counts


def learn_merges(
    word_counts: dict[bytes, int],
    n_merges: int,
    *,
    min_frequency: int = 2,
    forbidden: frozenset[bytes] = frozenset(),
    show_progress: bool | None = None,
) -> list[tuple[int, int, int]]:
    """Learn up to ``n_merges`` new tokens from weighted byte strings.

    Args:
        word_counts: distinct pre-tokens as UTF-8 bytes, mapped to how often each occurs.
        n_merges: the number of new token ids wanted (training stops earlier when no pair reaches
            ``min_frequency``).
        min_frequency: the smallest pair count worth merging.
        forbidden: byte strings a merge may not produce (the special tokens' spellings).
        show_progress: a tqdm bar; None shows it only on a terminal (and only after a second).

    Returns:
        ``(left_id, right_id, new_id)`` per merge, in merge order. Ids 0..255 are the bytes; new tokens get
        256, 257, ... (a merge that rebuilds an existing token's bytes reuses that id instead).
    """
    token_bytes: list[bytes] = [bytes([b]) for b in range(256)]
    id_of: dict[bytes, int] = {t: i for i, t in enumerate(token_bytes)}

    words: list[list[int]] = []
    counts: list[int] = []
    for data, count in word_counts.items():
        if len(data) > 1:  # a single byte has no pair to merge
            words.append(list(data))
            counts.append(count)

    pair_counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for w, word in enumerate(words):
        count = counts[w]
        for pair in zip(word, word[1:], strict=False):
            pair_counts[pair] = pair_counts.get(pair, 0) + count
            if pair in where:
                where[pair].add(w)
            else:
                where[pair] = {w}

    # Max-heap via negated counts; ties pop the smallest (left bytes, right bytes).
    heap = [(-c, token_bytes[a], token_bytes[b], (a, b)) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    if show_progress is None:
        show_progress = sys.stderr.isatty()
    bar = tqdm(total=n_merges, desc="BPE merges", unit="merge", disable=not show_progress, delay=1.0)
    merges: list[tuple[int, int, int]] = []
    min_frequency = max(1, min_frequency)
    heappop, heappush = heapq.heappop, heapq.heappush
    try:
        while len(merges) < n_merges and heap:
            neg_count, left, right, pair = heappop(heap)
            count = pair_counts.get(pair, 0)
            if count != -neg_count:  # stale entry: counts only fall, so re-queue with the current one
                if count > 0:
                    heappush(heap, (-count, left, right, pair))
                continue
            if count < min_frequency:
                break
            merged = left + right
            if merged in forbidden:
                continue
            new_id = id_of.get(merged)
            if new_id is None:
                new_id = len(token_bytes)
                token_bytes.append(merged)
                id_of[merged] = new_id
            merges.append((pair[0], pair[1], new_id))
            bar.update(1)
            for p, c in _apply_merge(pair, new_id, words, counts, pair_counts, where).items():
                heappush(heap, (-c, token_bytes[p[0]], token_bytes[p[1]], p))
    finally:
        bar.close()
    if len(merges) < n_merges:
        logger.info("BPE training stopped after %d of %d merges: no pair occurs %d+ times", len(merges), n_merges,
                    min_frequency)
    return merges


def _apply_merge(
    pair: tuple[int, int],
    new_id: int,
    words: list[list[int]],
    counts: list[int],
    pair_counts: dict[tuple[int, int], int],
    where: dict[tuple[int, int], set[int]],
) -> dict[tuple[int, int], int]:
    """Merge ``pair`` into ``new_id`` in every word that holds it; return the pairs that gained counts.

    Only the neighbours of each occurrence change: in ``x a b y`` the pairs (x, a) and (b, y) lose the word's count
    and (x, new) and (new, y) gain it. In ``a b a b`` the middle (b, a) is lost once and (new, new) gained once.
    """
    a, b = pair
    c = new_id
    get = pair_counts.get
    gained: dict[tuple[int, int], int] = {}
    # The "count the new pair p in word w" lines below appear twice (left and right neighbour) on purpose: this is
    # training's innermost loop, where a Python function call per occurrence would add its own overhead.

    for w in where.pop(pair):
        word = words[w]
        try:
            i = word.index(a)
        except ValueError:  # stale index entry: an earlier merge already consumed this word's `a`s
            continue
        n = len(word)
        count = counts[w]
        new = word[:i]
        merged_until = -1  # old index of the `b` of the last merge in this word
        while True:
            if i + 1 < n and word[i + 1] == b:
                if i > 0:
                    if merged_until != i - 1:  # else (b, a) was already taken off as the previous merge's right pair
                        pair_counts[(word[i - 1], a)] -= count
                    p = (new[-1], c)
                    pair_counts[p] = get(p, 0) + count
                    gained[p] = 0
                    if p in where:
                        where[p].add(w)
                    else:
                        where[p] = {w}
                if i + 2 < n:
                    right = word[i + 2]
                    pair_counts[(b, right)] -= count
                    if not (right == a and i + 3 < n and word[i + 3] == b):  # else the next merge adds (c, c)
                        p = (c, right)
                        pair_counts[p] = get(p, 0) + count
                        gained[p] = 0
                        if p in where:
                            where[p].add(w)
                        else:
                            where[p] = {w}
                new.append(c)
                merged_until = i + 1
                i += 2
            else:
                new.append(a)
                i += 1
            try:
                j = word.index(a, i)
            except ValueError:
                new.extend(word[i:])
                break
            new.extend(word[i:j])
            i = j
        if merged_until >= 0:
            words[w] = new
    pair_counts.pop(pair, None)
    for p in gained:
        gained[p] = pair_counts[p]
    return gained


def bytes_counts(pretoken_counts: Counter[str]) -> dict[bytes, int]:
    """Pre-token strings to their byte strings (distinct strings give distinct bytes)."""
    return {text_to_bytes(s): c for s, c in pretoken_counts.items()}
