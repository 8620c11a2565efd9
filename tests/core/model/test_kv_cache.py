"""KVCache: the contract the decoding code relies on."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from llm_lab.core.model import KVCache, MiniGPT, MiniGPTConfig
from llm_lab.core.model.kv_cache import SlotKVCache

CONFIG = MiniGPTConfig(vocab_size=10, context_length=8, n_layer=2, n_head=4, n_kv_head=2, n_embd=16)


def test_update_writes_in_place_and_returns_the_filled_prefix():
    cache = KVCache(CONFIG, batch_size=3)
    assert (cache.batch_size, cache.max_len, cache.length) == (3, 8, 0)
    k1, v1 = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)
    for layer in range(2):
        k_all, v_all = cache.update(layer, k1, v1)
        assert k_all.shape == (3, 2, 5, 4) and torch.equal(k_all, k1) and torch.equal(v_all, v1)
    cache.advance(5)
    k2 = torch.randn(3, 2, 1, 4)
    k_all, _ = cache.update(0, k2, k2)
    assert k_all.shape == (3, 2, 6, 4)
    assert torch.equal(k_all[:, :, :5], k1) and torch.equal(k_all[:, :, 5:], k2)
    assert cache.length == 5  # only advance() moves it


def test_explicit_device_and_dtype_allocate_up_front():
    cache = KVCache(CONFIG, batch_size=1, max_len=4, device="cpu", dtype=torch.float16)
    assert cache.dtype == torch.float16 and cache.device == torch.device("cpu")
    half = torch.ones(1, 2, 2, 4, dtype=torch.float16)
    k_all, _ = cache.update(1, half, half)
    assert k_all.dtype == torch.float16
    # Keys of another dtype would be cast silently into the buffers (and then clash with fp32 queries).
    with pytest.raises(ValueError, match=r"holds torch.float16 keys on cpu, but the model computed torch.float32"):
        cache.update(0, torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4))


def test_full_cache_and_bad_sizes_are_errors():
    cache = KVCache(CONFIG, batch_size=1, max_len=4)
    cache.update(0, torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))
    cache.advance(3)
    with pytest.raises(ValueError, match=r"KV cache is full: 3 positions cached \+ 2 new > max_len 4"):
        cache.update(0, torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 2, 4))
    with pytest.raises(ValueError, match=r"max_len \(9\) exceeds the model's max_positions \(8\)"):
        KVCache(CONFIG, batch_size=1, max_len=9)
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer"):
        KVCache(CONFIG, batch_size=0)


def test_reset_keeps_the_buffers():
    cache = KVCache(CONFIG, batch_size=1)
    buffer, _ = cache.update(0, torch.ones(1, 2, 2, 4), torch.ones(1, 2, 2, 4))
    cache.advance(2)
    cache.reset()
    assert cache.length == 0
    again, _ = cache.update(0, torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))
    assert again.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()


def test_compatibility_check_names_the_mismatch():
    cache = KVCache(CONFIG, batch_size=2)
    cache.check_compatible(CONFIG, 2)
    other = MiniGPTConfig(vocab_size=10, context_length=8, n_layer=3, n_head=4, n_kv_head=2, n_embd=16)
    with pytest.raises(ValueError, match=r"\(2, 2, 4\) in the cache, \(3, 2, 4\) in this model"):
        cache.check_compatible(other, 2)


def test_cache_pickles_and_copies():
    """The owner is a weak reference and is not pickled: a cache read back has no known owner; a deep copy keeps it."""
    model = MiniGPT(CONFIG).eval()
    x = torch.randint(0, 10, (1, 5))
    with torch.no_grad():
        full, _ = model(x)
        _, cache = model(x[:, :3], use_cache=True)
        for clone in (pickle.loads(pickle.dumps(cache)), copy.deepcopy(cache)):
            assert clone.length == 3
            rest, _ = model(x[:, 3:], past_key_values=clone)
            torch.testing.assert_close(rest, full[:, 3:], atol=1e-5, rtol=1e-5)


def _slot_step(model: MiniGPT, cache: SlotKVCache, tokens: list[int]) -> torch.Tensor:
    """One decode step of every slot (each at its own position); ``(slots, vocab)`` logits."""
    ids = torch.tensor(tokens)[:, None]
    logits, _ = model(ids, attention_mask=cache.step_mask(), past_key_values=cache, position_ids=cache.lengths[:, None])
    return logits[:, -1]


def _prefilled(model: MiniGPT, prompt: list[int]) -> KVCache:
    cache = KVCache(model.config, 1, max_len=len(prompt))
    model(torch.tensor([prompt]), past_key_values=cache)
    return cache


@pytest.mark.parametrize(
    ("overrides", "dtype"),
    [
        ({"pos_encoding": "learned"}, torch.float32),
        ({"pos_encoding": "rope", "n_kv_head": 1}, torch.float32),
        ({"pos_encoding": "alibi"}, torch.float32),
        ({"pos_encoding": "rope"}, torch.bfloat16),
    ],
)
def test_slot_rows_decode_bit_for_bit_alone_or_beside_others(overrides, dtype):
    """Three prompts of different lengths in slots 0, 2 and 3 of a 4-slot cache (slot 1 idle), three steps.

    Each row's logits equal, bit for bit, those of the same row decoded alone in the same 4-slot cache (the other
    slots idle), and, up to rounding, the plain uncached forward over the row's whole sequence.
    """
    torch.manual_seed(0)
    config = MiniGPTConfig(vocab_size=40, context_length=16, n_layer=2, n_head=4, n_embd=32, **overrides)
    model = MiniGPT(config).eval().to(dtype)
    prompts = {0: [3, 1, 4, 1, 5, 9, 2], 2: [6, 5], 3: [3, 5, 8, 9, 7]}
    fed = {0: [2, 6, 5], 2: [3, 5, 8], 3: [9, 7, 9]}
    with torch.no_grad():
        together = SlotKVCache(config, 4, max_len=16)
        for slot, prompt in prompts.items():
            together.write_row(slot, _prefilled(model, prompt))
        batched = [_slot_step(model, together, [fed.get(s, [0] * 3)[t] for s in range(4)]) for t in range(3)]
        for slot, prompt in prompts.items():
            alone = SlotKVCache(config, 4, max_len=16)
            alone.write_row(slot, _prefilled(model, prompt))
            steps = [_slot_step(model, alone, [fed[slot][t] if s == slot else 0 for s in range(4)]) for t in range(3)]
            full, _ = model(torch.tensor([prompt + fed[slot]]))
            for t in range(3):
                assert torch.equal(batched[t][slot], steps[t][slot])
                tolerance = 1e-5 if dtype == torch.float32 else 3e-2
                torch.testing.assert_close(batched[t][slot], full[0, len(prompt) + t], atol=tolerance, rtol=tolerance)
        assert together.lengths.tolist() == [10, 0, 5, 8]  # idle slot 1 never moved
        assert together.dtype == dtype  # the buffers follow the keys written


def test_slot_cache_takes_one_token_per_step_and_refuses_a_previous_token_embedding():
    cache = SlotKVCache(CONFIG, 2, max_len=8)
    with pytest.raises(ValueError, match=r"one token per row and step, got 3; prefill elsewhere"):
        cache.check_room(3)
    with pytest.raises(ValueError, match=r"5 prefilled positions do not fit a slot of 4"):
        SlotKVCache(CONFIG, 1, max_len=4).write_row(0, _prefilled(MiniGPT(CONFIG).eval(), [1, 2, 3, 4, 5]))
    bigram = MiniGPTConfig(vocab_size=10, context_length=8, n_layer=1, n_head=2, n_embd=8, bigram_embedding=True)
    with pytest.raises(ValueError, match="cannot serve a model with bigram_embedding"):
        SlotKVCache(bigram, 2)


def test_a_full_slot_is_refused_by_the_step_before_any_layer_writes():
    model = MiniGPT(CONFIG).eval()
    cache = SlotKVCache(CONFIG, 2, max_len=4)
    with torch.no_grad():
        cache.write_row(1, _prefilled(model, [1, 2, 3]))
        _slot_step(model, cache, [0, 4])  # slot 1's fourth position: the last column
        keys = [k.clone() for k in cache._keys]
        assert cache.lengths.tolist() == [0, 4]
        with pytest.raises(ValueError, match=r"a slot of the KV cache is full \(max_len 4\)"):
            _slot_step(model, cache, [0, 5])
    assert all(torch.equal(k, before) for k, before in zip(cache._keys, keys, strict=True))  # nothing written


def test_select_rows_continues_each_chosen_prefix_like_the_uncached_forward():
    """Two prefixes cached once; copies of rows [1, 1, 0] then take different next tokens, and each row's logits
    equal those of the whole sequence run without a cache."""
    torch.manual_seed(0)
    model = MiniGPT(MiniGPTConfig(vocab_size=50, context_length=16, n_layer=2, n_head=2, n_embd=16)).eval()
    prefixes = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 10]])
    cache = KVCache(model.config, 2, max_len=6)
    with torch.no_grad():
        model(prefixes, past_key_values=cache)
        rows = torch.tensor([1, 1, 0])
        nxt = torch.tensor([[11, 12], [13, 14], [15, 16]])
        logits, _ = model(nxt, past_key_values=cache.select_rows(rows))
        whole, _ = model(torch.cat([prefixes[rows], nxt], dim=1))
    torch.testing.assert_close(logits, whole[:, -2:], rtol=1e-5, atol=1e-5)
    assert cache.batch_size == 2 and cache.length == 4  # the original is untouched


def test_select_rows_needs_a_filled_cache_and_row_indices():
    model = MiniGPT(MiniGPTConfig(vocab_size=50, context_length=16, n_layer=1, n_head=2, n_embd=16)).eval()
    cache = KVCache(model.config, 2)
    with pytest.raises(ValueError, match="select_rows needs a filled cache"):
        cache.select_rows(torch.tensor([0]))
    with torch.no_grad():
        model(torch.tensor([[1, 2], [3, 4]]), past_key_values=cache)
    with pytest.raises(ValueError, match="rows must be a non-empty 1-D tensor"):
        cache.select_rows(torch.tensor([[0]]))


def test_first_rows_is_a_view_a_step_through_it_writes_the_shared_slots():
    torch.manual_seed(0)
    model = MiniGPT(CONFIG).eval()
    cache = SlotKVCache(CONFIG, 3, max_len=8)
    with pytest.raises(ValueError, match="first_rows needs the buffers, allocated by the first write_row or step"):
        cache.first_rows(1)
    with torch.no_grad():
        cache.write_row(0, _prefilled(model, [1, 2, 3]))
        cache.write_row(2, _prefilled(model, [4, 5]))
        assert cache.first_rows(3) is cache
        for n in (0, 4):
            with pytest.raises(ValueError, match=rf"first_rows takes 1 to 3 rows, got {n}"):
                cache.first_rows(n)
        before = [k.clone() for k in cache._keys]
        prefix = cache.first_rows(2)  # slot 0 busy, slot 1 idle
        assert prefix.batch_size == 2 and prefix.lengths.tolist() == [3, 0]
        _slot_step(model, prefix, [7, 0])
    assert cache.lengths.tolist() == [4, 0, 2]  # slot 0 moved on through the view, slot 2 (outside it) did not
    assert cache.positions[0, 3] == 3
    for layer, old in zip(cache._keys, before, strict=True):
        assert not torch.equal(layer[0, :, 3], old[0, :, 3])  # the new key is in the shared buffer
        assert torch.equal(layer[2], old[2])
