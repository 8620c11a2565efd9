import pytest

from llm_lab.core.model.config import MiniGPTConfig


def test_defaults_resolve_kv_heads_and_attention_type():
    cfg = MiniGPTConfig(n_head=8, n_embd=64)
    assert (cfg.n_kv_head, cfg.attention_type, cfg.head_dim, cfg.hidden_dim) == (8, "mha", 8, 256)
    assert MiniGPTConfig(n_head=8, n_embd=64, n_kv_head=2).attention_type == "gqa"
    assert MiniGPTConfig(n_head=8, n_embd=64, attention_type="mqa").n_kv_head == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_embd": 30, "n_head": 4}, r"n_embd \(30\) must be divisible by n_head \(4\)"),
        ({"n_head": 6, "n_kv_head": 4, "n_embd": 48}, r"n_head \(6\) must be divisible by n_kv_head \(4\)"),
        ({"n_head": 2, "n_embd": 6, "pos_encoding": "rope"}, r"head size must be even; n_embd / n_head = 3"),
        ({"n_layer": 0}, r"n_layer must be a positive integer, got 0"),
        ({"vocab_size": -5}, r"vocab_size must be a positive integer"),
        ({"norm": "batchnorm"}, r"norm='batchnorm' is not supported; choose one of: layernorm, rmsnorm"),
        ({"mlp": "tanh"}, r"mlp='tanh' is not supported; choose one of: gelu, gelu_tanh, swiglu, relu2"),
        ({"pos_encoding": "xpos"}, r"choose one of: learned, sinusoidal, rope, alibi, none"),
        ({"attention_type": "mla"}, r"attention_type='mla' is not supported; choose one of: mha, gqa, mqa"),
        ({"attn_impl": "flash"}, r"attn_impl='flash' is not supported; choose one of: auto, sdpa, chunked, reference"),
        ({"n_head": 4, "n_embd": 32, "attention_type": "mha", "n_kv_head": 2}, r"disagrees with n_kv_head=2"),
        ({"n_head": 4, "n_embd": 32, "attention_type": "gqa"}, r"attention_type='gqa' needs n_kv_head"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"bias": "false"}, r"bias must be True or False, got 'false'"),
        ({"tie_embeddings": 1}, r"tie_embeddings must be True or False, got 1"),
        ({"norm_eps": "1e-5"}, r"norm_eps must be a finite number, got '1e-5'"),
        ({"init_std": float("nan")}, r"init_std must be a finite number, got nan"),
        ({"rope_theta": None}, r"rope_theta must be a finite number, got None"),
        ({"dropout": True}, r"dropout must be a finite number, got True"),
        ({"n_embd": 9, "n_head": 3, "pos_encoding": "sinusoidal"}, r"sinusoidal positions need an even n_embd, got 9"),
        ({"n_head": 4, "n_embd": 32, "n_kv_head": 8}, r"n_head \(4\) must be divisible by n_kv_head \(8\)"),
        ({"max_seq_len": 512, "context_length": 256}, r"learned positions have only 256 entries"),
        ({"max_seq_len": 100, "context_length": 256, "pos_encoding": "rope"}, r"must be at least context_length"),
    ],
)
def test_invalid_configs_say_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MiniGPTConfig(**kwargs)


def test_extrapolating_encodings_may_run_past_the_context():
    cfg = MiniGPTConfig(context_length=64, max_seq_len=128, pos_encoding="rope", n_head=2, n_embd=32)
    assert cfg.max_positions == 128


def test_derived_head_values_are_not_stored_and_old_resolved_files_still_load():
    from llm_lab.utils.config_loader import apply_overrides, config_from_dict, config_to_dict

    cfg = MiniGPTConfig(n_head=8, n_embd=64)
    data = config_to_dict(cfg)
    assert (data["n_kv_head"], data["attention_type"]) == (None, None)  # "derive it", never a stale count
    assert config_from_dict(MiniGPTConfig, data) == cfg
    # Files written before (and dataclasses.asdict today) hold the resolved values: they load to an equal config,
    # checked against the head counts, and the count they name stays fixed under a later n_head override.
    old = {**data, "n_kv_head": 8, "attention_type": "mha"}
    assert config_from_dict(MiniGPTConfig, old) == cfg
    with pytest.raises(ValueError, match=r"attention_type='mha' disagrees with n_kv_head=2"):
        config_from_dict(MiniGPTConfig, {**old, "n_kv_head": 2})
    with pytest.raises(ValueError, match=r"attention_type='mha' disagrees with n_kv_head=8 and n_head=16"):
        apply_overrides({"model": config_from_dict(MiniGPTConfig, old)}, ["model.n_head=16"])
    assert apply_overrides({"model": cfg}, ["model.n_head=16"])["model"].n_kv_head == 16
    # Attribute reads, equality and repr see the resolved values.
    assert cfg == MiniGPTConfig(n_head=8, n_embd=64, n_kv_head=8, attention_type="mha")
    assert "n_kv_head=8" in repr(cfg) and "attention_type='mha'" in repr(cfg)
