"""Training: hand-derived golden merges, determinism, streaming, and the tie-break rule."""

from __future__ import annotations

import random

import pytest

from llm_lab.core.tokenization import SubwordTokenizer, bpe_train
from llm_lab.core.tokenization.bpe_train import count_pretokens, learn_merges
from llm_lab.core.tokenization.byte_level import GPT2_PATTERN, GPT4_PATTERN


def test_golden_hug_pug_pun_bun():
    """Five words with counts (each document one word, so each is one pre-token):

        hug x10, pug x5, pun x12, bun x4, hugs x5

    Pair counts over bytes: u g = 10+5+5 = 20, p u = 5+12 = 17, u n = 12+4 = 16, h u = 10+5 = 15, g s = 5, b u = 4.

    1. (u, g) 20  -> 256 "ug".   Words: h ug, p ug, p u n, b u n, h ug s.
       Now h ug = 15, u n = 16, p u = 12, p ug = 5, ug s = 5, b u = 4.
    2. (u, n) 16  -> 257 "un".   Now h ug = 15, p un = 12, p ug = 5, ug s = 5, b un = 4.
    3. (h, ug) 15 -> 258 "hug".  Now p un = 12, p ug = 5, hug s = 5, b un = 4.
    4. (p, un) 12 -> 259 "pun".  Now p ug = 5, hug s = 5, b un = 4.
    5. Tie at 5: (b"hug", b"s") < (b"p", b"ug") in byte order -> 260 "hugs".
    6. (p, ug) 5  -> 261 "pug".
    7. (b, un) 4  -> 262 "bun".   Then <|endoftext|> = 263, vocab_size 264.
    """
    docs = ["hug"] * 10 + ["pug"] * 5 + ["pun"] * 12 + ["bun"] * 4 + ["hugs"] * 5
    tok = SubwordTokenizer.train(docs, 264, show_progress=False)
    assert tok.merges == [(b"u", b"g"), (b"u", b"n"), (b"h", b"ug"), (b"p", b"un"), (b"hug", b"s"), (b"p", b"ug"),
                          (b"b", b"un")]
    assert tok.special_tokens == {"<|endoftext|>": 263}
    assert tok.eot_token_id == 263 and tok.vocab_size == 264
    assert tok.encode("hugs") == [260]
    assert tok.encode("bug") == [ord("b"), 256]  # b + ug: "bu" was never merged
    assert tok.encode("thug") == [ord("t"), 258]  # ug first (rank 0), then h+ug (rank 2)
    # " bun" is one piece: space b u n -> space b un -> space bun; no merge involves the space.
    assert tok.encode("pun bun") == [259, ord(" "), 262]


def test_golden_aaabdaaabac_overlaps_and_ties():
    """The classic "aaabdaaabac" (one pre-token: all letters), min_frequency=2.

    Byte pairs: a a = 4 (two in each "aaa"), a b = 2, b d = d a = b a = a c = 1.
    1. (a, a) 4 -> 256 "aa", left to right: "aaab" becomes aa a b, so the word is aa a b d aa a b a c.
       Now (aa, a) = 2 and (a, b) = 2: a tie. (b"a", b"b") < (b"aa", b"a") because b"a" < b"aa".
    2. (a, b) 2 -> 257 "ab". Word: aa ab d aa ab a c.
    3. (aa, ab) 2 -> 258 "aaab". Word: aaab d aaab a c; every pair now occurs once < min_frequency: stop.
    So only 3 merges although 256 + 5 + 1 ids were asked for; the special token takes the next id, 259.
    """
    tok = SubwordTokenizer.train("aaabdaaabac", 262, show_progress=False)
    assert tok.merges == [(b"a", b"a"), (b"a", b"b"), (b"aa", b"ab")]
    assert tok.vocab_size == 260 and tok.eot_token_id == 259
    assert tok.encode("aaabdaaabac") == [258, ord("d"), 258, ord("a"), ord("c")]
    assert tok.encode("aaaa") == [256, 256]

    # With min_frequency=1 the single pairs merge too, ties again by bytes: (a, c) has the smallest left side.
    tok1 = SubwordTokenizer.train("aaabdaaabac", 260, special_tokens=(), min_frequency=1, show_progress=False)
    assert tok1.merges[3] == (b"a", b"c")


def test_training_is_deterministic_and_independent_of_document_order(small_text, stress_text):
    docs = small_text.splitlines(keepends=True) + [stress_text]
    first = SubwordTokenizer.train(docs, 500, min_frequency=1, show_progress=False)
    again = SubwordTokenizer.train(docs, 500, min_frequency=1, show_progress=False)
    shuffled = docs[:]
    random.Random(0).shuffle(shuffled)
    other_order = SubwordTokenizer.train(shuffled, 500, min_frequency=1, show_progress=False)
    assert first.merges == again.merges == other_order.merges
    assert len(first.merges) == 500 - 256 - 1  # many of them ties at count 1, decided by the byte order


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, GPT4_PATTERN])
def test_streamed_file_counts_equal_whole_text_counts(pattern, tmp_path, monkeypatch, stress_text, small_text):
    """Files are read in blocks cut at "letter|space letter"; the pre-token counts must equal the whole-text ones."""
    text = (small_text + stress_text) * 3
    path = tmp_path / "corpus.txt"
    path.write_bytes(text.encode("utf-8"))  # keeps the CRLFs of the stress text
    monkeypatch.setattr(bpe_train, "_BLOCK_CHARS", 97)  # many cuts, at odd places
    streamed = count_pretokens(path, pattern)
    assert streamed == count_pretokens(text, pattern)
    assert sum(len(p) * c for p, c in streamed.items()) == len(text)


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, GPT4_PATTERN])
@pytest.mark.parametrize("block_chars", [5, 13, 64])
def test_streaming_is_exact_on_random_text(pattern, block_chars, tmp_path, monkeypatch):
    """Random text over the characters that decide where pieces end (letters, digits, spaces, newlines, CR, tabs,
    punctuation, apostrophes, CJK): every cut the streamer makes must leave the pre-token counts unchanged."""
    rng = random.Random(block_chars)
    alphabet = ["a", "b", "Q", "é", "日", "1", "23", " ", " ", "  ", "\n", "\n\n", "\r\n", "\t", ".", "!?", "'s", "'"]
    text = "".join(rng.choice(alphabet) for _ in range(4000))
    path = tmp_path / "random.txt"
    path.write_bytes(text.encode("utf-8"))
    monkeypatch.setattr(bpe_train, "_BLOCK_CHARS", block_chars)
    assert count_pretokens(path, pattern) == count_pretokens(text, pattern)


def test_training_from_path_equals_training_from_text(tmp_path, small_text):
    path = tmp_path / "corpus.txt"
    path.write_text(small_text, encoding="utf-8")
    from_path = SubwordTokenizer.train(path, 320, show_progress=False)
    from_text = SubwordTokenizer.train(small_text, 320, show_progress=False)
    from_mixed = SubwordTokenizer.train([path], 320, show_progress=False)
    assert from_path.merges == from_text.merges == from_mixed.merges


def test_a_str_naming_a_file_is_text_but_warns(tmp_path, small_text):
    path = tmp_path / "corpus.txt"
    path.write_text(small_text, encoding="utf-8")
    with pytest.warns(UserWarning, match=r"training on the text '.*corpus.txt', which is also the name of a file; "
                                         r"pass pathlib.Path\("):
        tok = SubwordTokenizer.train(str(path), 300, special_tokens=(), min_frequency=1, show_progress=False)
    assert tok.decode(tok.encode(str(path))) == str(path)
    assert b"".join(tok.merges[0]) in str(path).encode()  # learned from the name, as documented


def test_special_tokens_in_training_text_are_not_learned():
    """"<|endoftext|>" between documents is cut out: no merge may be learned from its characters."""
    text = "<|endoftext|>".join(["ab ab ab"] * 50)
    tok = SubwordTokenizer.train(text, 300, show_progress=False)
    learned = b"".join(left + right for left, right in tok.merges)
    assert b"<" not in learned and b"|" not in learned and b"endoftext" not in learned
    assert tok.encode(text, allowed_special="all").count(tok.eot_token_id) == 49


def test_a_merge_that_would_spell_a_special_token_is_skipped():
    """Special token "Ġa" is how vocab.json spells the merge (" ", "a"); that merge must never be learned, or the
    file would hold the name "Ġa" twice. (The text " a" is not the special token's text, so it stays in training.)

    Pre-tokens: "a" x1, " a" x2, " xy" x2. Pairs at count 2: (" ", a), (" ", x), (x, y). In byte order (" ", a) is
    first, but it is forbidden, so the one merge learned is (" ", x).
    """
    tok = SubwordTokenizer.train("a a a xy xy", 258, special_tokens=("Ġa",), show_progress=False)
    assert tok.merges == [(b" ", b"x")]
    assert tok.special_tokens == {"Ġa": 257}
    assert tok.encode(" a") == [ord(" "), ord("a")]
    assert tok.encode("Ġa", allowed_special="all") == [257]
    # Without the special token, the tie goes to (" ", a).
    assert SubwordTokenizer.train("a a a xy xy", 257, special_tokens=(), show_progress=False).merges == [(b" ", b"a")]


def test_learn_merges_gives_sequential_ids(small_text):
    counts = {piece.encode(): c for piece, c in count_pretokens(small_text, GPT2_PATTERN).items()}
    merges = learn_merges(counts, 40, show_progress=False)
    assert [new_id for _, _, new_id in merges] == list(range(256, 296))
    assert all(left < new_id and right < new_id for left, right, new_id in merges)


def test_min_frequency_stops_training_early():
    tok = SubwordTokenizer.train("abcdefgh", 1000, min_frequency=2, show_progress=False)
    assert tok.merges == [] and tok.vocab_size == 257


def naive_merges(word_counts: dict[bytes, int], n_merges: int, min_frequency: int) -> list[tuple[int, int, int]]:
    """Reference trainer: recount every pair from scratch before each merge (slow, obviously right)."""
    token_bytes = [bytes([b]) for b in range(256)]
    words = {tuple(w): c for w, c in word_counts.items()}
    merges = []
    while len(merges) < n_merges:
        pairs: dict[tuple[int, int], int] = {}
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] = pairs.get(pair, 0) + count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], token_bytes[p[0]], token_bytes[p[1]]))
        if pairs[best] < min_frequency:
            break
        new_id = len(token_bytes)
        token_bytes.append(token_bytes[best[0]] + token_bytes[best[1]])
        merges.append((*best, new_id))
        merged_words: dict[tuple[int, ...], int] = {}
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged_words[tuple(out)] = merged_words.get(tuple(out), 0) + count
        words = merged_words
    return merges


@pytest.mark.parametrize("min_frequency", [1, 2])
def test_incremental_counts_equal_a_full_recount(min_frequency, stress_text, small_text):
    """Overlap-heavy words (runs of one letter, abab, aab...) plus real text: same merges as the naive trainer."""
    rng = random.Random(1)
    overlap_words = ["".join(rng.choice("ab") for _ in range(rng.randint(2, 12))) for _ in range(300)]
    text = " ".join(overlap_words) + " aaaaaaaaaaaaaaa abababababa " + small_text + stress_text
    counts = {piece.encode(): c for piece, c in count_pretokens(text, GPT2_PATTERN).items()}
    fast = learn_merges(counts, 400, min_frequency=min_frequency, show_progress=False)
    assert len(fast) > 150
    assert fast == naive_merges(counts, 400, min_frequency)


def test_progress_bar_only_when_asked_or_on_a_terminal(monkeypatch, capsys):
    """tqdm over the merges: shown for show_progress=True, for None only on a terminal, and (real tqdm, its delay
    set to 0 here) it writes to stderr; pytest's captured stderr is no terminal, so tests stay silent."""
    real_tqdm = bpe_train.tqdm
    calls = []

    def recording_tqdm(*args, **kwargs):
        calls.append(kwargs)
        return real_tqdm(*args, **{**kwargs, "delay": 0})

    monkeypatch.setattr(bpe_train, "tqdm", recording_tqdm)
    SubwordTokenizer.train("ab ab ab", 258, special_tokens=(), show_progress=None)
    assert calls[-1]["disable"] is True and calls[-1]["delay"] > 0  # a moment's grace even when enabled
    assert capsys.readouterr().err == ""
    SubwordTokenizer.train("ab ab ab", 258, special_tokens=(), show_progress=True)
    assert calls[-1]["disable"] is False
    assert "BPE merges" in capsys.readouterr().err
    monkeypatch.setattr(bpe_train.sys.stderr, "isatty", lambda: True)
    SubwordTokenizer.train("ab ab ab", 258, special_tokens=(), show_progress=None)
    assert calls[-1]["disable"] is False


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, GPT4_PATTERN])
def test_parallel_counts_equal_serial_counts(pattern, tmp_path, monkeypatch, stress_text, small_text):
    """Counting in worker processes sums the same counts: files cut into blocks, documents, special tokens."""
    text = (small_text + "<|endoftext|>" + stress_text) * 5
    path = tmp_path / "corpus.txt"
    path.write_bytes(text.encode("utf-8"))
    monkeypatch.setattr(bpe_train, "_BLOCK_CHARS", 211)
    monkeypatch.setattr(bpe_train, "_PARALLEL_BATCH_CHARS", 1000)  # many shares, summed in the parent
    texts = [path, small_text, "<|endoftext|> x", stress_text]
    serial = count_pretokens(texts, pattern, ["<|endoftext|>"])
    assert bpe_train.count_pretokens_parallel(texts, pattern, ["<|endoftext|>"], workers=2) == serial
    assert "<|endoftext|>" not in serial


def test_training_with_workers_equals_training_in_one_process(tmp_path, small_text, stress_text):
    path = tmp_path / "corpus.txt"
    path.write_text((small_text + stress_text) * 4, encoding="utf-8", newline="")
    one = SubwordTokenizer.train(path, 420, show_progress=False)
    two = SubwordTokenizer.train(path, 420, show_progress=False, workers=2)
    assert two.merges == one.merges and two.vocab == one.vocab
    with pytest.raises(ValueError, match="workers must be an int from 1 to 256, got 0"):
        SubwordTokenizer.train(path, 420, workers=0)
