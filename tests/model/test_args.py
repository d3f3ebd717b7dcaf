import pytest
import torch

from wmtp_core.model import ModelArgs, ModelArgsError, Transformer, preset_7b_1t_4
from wmtp_core.model.args import ffn_args_for_hidden


def test_7b_1t_4_preset_on_meta_device_has_metas_size_and_layout():
    args = preset_7b_1t_4()
    with torch.device("meta"):
        model = Transformer(args)
    state = model.state_dict()
    assert args.ffn_hidden_dim == 11008
    assert len(state) == 291
    # 32 blocks of (4 * 4096^2 + 3 * 4096 * 11008 + 2 * 4096) + embedding + output + norm
    assert (
        model.num_parameters() == 32 * (4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096) + 2 * 32000 * 4096 + 4096
    )
    assert 6.6e9 < model.num_parameters() < 6.8e9
    assert len(model.layers) == 29 and len(model.extra_heads) == 3 and model.n_future == 4
    assert state["layers.28.feed_forward.w1.weight"].shape == (11008, 4096)
    assert state["extra_heads.2.attention.wq.weight"].shape == (4096, 4096)


def test_params_json_with_unknown_key_is_an_error_naming_it(tmp_path):
    path = tmp_path / "params.json"
    path.write_text('{"dim": 64, "n_layers": 2, "n_heads": 4, "vocab_size": 10, "use_scaled_rope": true}')
    with pytest.raises(ModelArgsError, match="use_scaled_rope"):
        ModelArgs.from_json(path)


def test_llama2_params_json_is_accepted():
    args = ModelArgs.from_dict(
        {"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-05, "vocab_size": -1}
    )
    assert args.vocab_size == -1 and args.n_future_tokens == 1 and args.ffn_hidden_dim == 11008
    with pytest.raises(ValueError, match="vocab_size"):
        Transformer(args)


@pytest.mark.parametrize(
    "changes, field",
    [({"dim": 66}, "dim"), ({"n_kv_heads": 3}, "n_kv_heads"), ({"n_future_tokens": 5}, "n_future_tokens")],
)
def test_inconsistent_args_name_the_field(changes, field):
    with pytest.raises(ModelArgsError, match=field):
        ModelArgs(**{"dim": 64, "n_layers": 4, "n_heads": 4, "vocab_size": 10, **changes})


@pytest.mark.parametrize("dim, hidden", [(4096, 11008), (2560, 6912), (64, 172), (64, 100), (128, 1000)])
def test_ffn_args_reproduce_any_hf_intermediate_size(dim, hidden):
    multiple_of, multiplier = ffn_args_for_hidden(dim, hidden)
    args = ModelArgs(dim=dim, n_heads=1, multiple_of=multiple_of, ffn_dim_multiplier=multiplier)
    assert args.ffn_hidden_dim == hidden
