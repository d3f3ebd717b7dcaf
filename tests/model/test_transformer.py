import re

import pytest
import torch

from wmtp_core.model import ModelArgs, Transformer

ARGS = ModelArgs(
    dim=64, n_layers=5, n_heads=4, n_kv_heads=2, vocab_size=97, multiple_of=16, n_future_tokens=3
)


def make(args: ModelArgs = ARGS, seed: int = 0) -> Transformer:
    model = Transformer(args)
    model.init_weights(torch.Generator().manual_seed(seed))
    return model


def tokens(batch=2, seqlen=11, vocab=97, seed=1):
    return torch.randint(0, vocab, (batch, seqlen), generator=torch.Generator().manual_seed(seed))


def meta_key_names(n_layers: int, n_future: int) -> set[str]:
    """Key names of facebook/multi-token-prediction's consolidated.pth, spelled out independently."""
    block = [
        "attention.wq.weight",
        "attention.wk.weight",
        "attention.wv.weight",
        "attention.wo.weight",
        "feed_forward.w1.weight",
        "feed_forward.w2.weight",
        "feed_forward.w3.weight",
        "attention_norm.weight",
        "ffn_norm.weight",
    ]
    keys = {"tok_embeddings.weight", "norm.weight", "output.weight"}
    keys |= {f"layers.{i}.{b}" for i in range(n_layers - n_future + 1) for b in block}
    keys |= {f"extra_heads.{j}.{b}" for j in range(n_future - 1) for b in block}
    return keys


def test_strict_load_of_a_meta_layout_state_dict():
    model = make()
    assert set(model.state_dict()) == meta_key_names(5, 3)
    g = torch.Generator().manual_seed(5)
    meta_state = {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
    result = model.load_state_dict(meta_state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(
        model.extra_heads[1].feed_forward.w3.weight, meta_state["extra_heads.1.feed_forward.w3.weight"]
    )


def test_no_rope_tensor_in_the_state_dict():
    model = make()
    assert not [k for k in model.state_dict() if re.search("rope|freq", k)]
    assert not list(model.buffers())


def test_forward_shapes_and_api_pieces_agree():
    model = make()
    x = tokens()
    one = model(x)
    every = model(x, all_heads=True)
    assert one.shape == (2, 11, 1, 97) and every.shape == (2, 11, 3, 97)
    torch.testing.assert_close(every[:, :, :1], one, rtol=0, atol=1e-6)
    h_trunk = model.trunk(x)
    assert h_trunk.shape == (2, 11, 64)
    # Heads are numbered 1..n_future (head k predicts token t+k); all_heads puts head k at index k-1.
    for k in (1, 2, 3):
        head_k = model.unembed(model.head(h_trunk, k))
        torch.testing.assert_close(head_k, every[:, :, k - 1], rtol=0, atol=1e-6)
    for bad in (0, 4):
        with pytest.raises(IndexError, match=f"k={bad}: this model has heads 1..3"):
            model.head(h_trunk, bad)


def test_heads_use_their_own_blocks():
    """Head 1 is layers[-1] and head k >= 2 is extra_heads[k-2], as DESIGN.md lays them out."""
    model = make()
    h = model.trunk(tokens())
    before = {k: model.head(h, k) for k in (1, 2, 3)}
    with torch.no_grad():
        model.extra_heads[0].feed_forward.w2.weight.mul_(2)
    after = {k: model.head(h, k) for k in (1, 2, 3)}
    assert not torch.allclose(after[2], before[2])
    assert torch.equal(after[1], before[1]) and torch.equal(after[3], before[3])
    with torch.no_grad():
        model.layers[-1].feed_forward.w2.weight.mul_(2)
    assert not torch.allclose(model.head(h, 1), before[1])


def test_gradients_reach_every_parameter():
    model = make()
    x = tokens()
    logits = model(x, all_heads=True)
    targets = tokens(seed=2)
    loss = sum(
        torch.nn.functional.cross_entropy(logits[:, :, k].reshape(-1, 97), targets.reshape(-1))
        for k in range(3)
    )
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("n_kv_heads", [None, 2, 1])
def test_kv_cache_decoding_equals_full_forward(n_kv_heads):
    model = make(ARGS.replace(n_kv_heads=n_kv_heads)).eval()
    x = tokens(seqlen=13)
    with torch.no_grad():
        full = model(x, all_heads=True)
        cache = model.new_cache(batch_size=2, max_seq_len=32)
        steps = [model(x[:, :4], all_heads=True, cache=cache)]  # prompt prefill
        steps += [model(x[:, t : t + 1], all_heads=True, start_pos=t, cache=cache) for t in range(4, 9)]
        steps += [
            model(x[:, 9:], all_heads=True, start_pos=9, cache=cache)
        ]  # a multi-token chunk after a prefix
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)


def test_kv_cache_rolls_back_by_calling_with_a_smaller_start_pos():
    model = make().eval()
    x, other = tokens(seqlen=10), tokens(seqlen=10, seed=7)
    with torch.no_grad():
        full = model(x, all_heads=True)
        cache = model.new_cache(batch_size=2, max_seq_len=16)
        model(x[:, :6], cache=cache)
        model(other[:, 6:9], all_heads=True, start_pos=6, cache=cache)  # speculative tokens, then rejected
        redo = model(x[:, 6:], all_heads=True, start_pos=6, cache=cache)
    torch.testing.assert_close(redo, full[:, 6:], rtol=0, atol=1e-5)


def test_kv_cache_covers_trunk_and_every_head_and_rejects_overflow():
    model = make()
    cache = model.new_cache(batch_size=1, max_seq_len=8)
    assert len(cache.keys) == len(cache.values) == 5  # 2 trunk blocks + 3 heads
    assert cache.keys[0].shape == (1, 2, 8, 16)
    with torch.no_grad():
        model(tokens(batch=1, seqlen=3), all_heads=True, cache=cache)
    assert all(k[:, :, :3].abs().sum() > 0 and k[:, :, 3:].abs().sum() == 0 for k in cache.keys)
    with pytest.raises(ValueError, match="KV cache length 8"):
        model(tokens(batch=1, seqlen=3), start_pos=6, cache=cache)
    with pytest.raises(ValueError, match="batch size 1"):
        model(tokens(batch=2, seqlen=3), cache=cache)


def test_bfloat16_forward_runs_and_tracks_fp32():
    model = make()
    x = tokens()
    ref = model(x)
    low = model.to(torch.bfloat16)(x)
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.1
