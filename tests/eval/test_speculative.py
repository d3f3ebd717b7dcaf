"""Self-speculative decoding returns exactly the greedy tokens, on a random and on a trained multi-head model."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from wmtp_core.eval.generate import FINISH_STOP, SamplingParams, generate_ids
from wmtp_core.eval.speculative import SpeculativeStats, speculative_generate
from wmtp_core.model import ModelArgs, Transformer, make_micro
from wmtp_core.tokenizer import Tokenizer, train_tokenizer


def code_corpus(n: int, seed: int) -> list[str]:
    """Repetitive little functions: the heads can learn to see several tokens ahead, but not every name."""
    rng = random.Random(seed)
    ops = [("add", "+"), ("sub", "-"), ("mul", "*")]
    texts = []
    for _ in range(n):
        name, sym = rng.choice(ops)
        a, b = rng.choice("xyzab"), rng.choice("uvwcd")
        texts.append(f"def {name}_{a}{b}({a}, {b}):\n    result = {a} {sym} {b}\n    return result\n\n\n")
    return texts


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("tok") / "code.model"
    return Tokenizer(train_tokenizer(code_corpus(300, seed=0), path, vocab_size=300))


@pytest.fixture(scope="module")
def trained(tokenizer) -> Transformer:
    """A 4-head model fitted for a few seconds with the sum of per-head cross-entropies."""
    torch.manual_seed(0)
    args = ModelArgs(
        dim=64, n_layers=6, n_heads=4, vocab_size=tokenizer.vocab_size, n_future_tokens=4, multiple_of=32
    )
    model = Transformer(args)
    model.init_weights(torch.Generator().manual_seed(0))
    data = torch.tensor(tokenizer.encode("".join(code_corpus(300, seed=0))))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    seq = 48
    for _ in range(60):
        starts = torch.randint(0, len(data) - seq, (8,), generator=g)
        x = torch.stack([data[s : s + seq] for s in starts.tolist()])
        h = model.trunk(x)
        loss = sum(
            F.cross_entropy(
                model.unembed(model.head(h, k))[:, : seq - k].flatten(0, 1), x[:, k:].flatten()
            )
            for k in range(1, model.n_future + 1)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def greedy(model, tokenizer, prompt, max_new_tokens, stop=()):
    params = SamplingParams(max_new_tokens=max_new_tokens, stop=tuple(stop))
    return generate_ids(model, tokenizer, [prompt], params, batch_size=1, progress=False)[0][0]


def test_random_micro_model_matches_greedy(llama2_tokenizer):
    tok = Tokenizer(llama2_tokenizer)
    model = make_micro("policy", tok.vocab_size, seed=0).eval()
    for text in ["def add(a, b):\n", "import os\n"]:
        prompt = tok.encode(text, bos=True)
        spec, stats = speculative_generate(model, prompt, max_new_tokens=12, eos_id=tok.eos_id, tokenizer=tok)
        assert spec == greedy(model, tok, prompt, 12)
        assert stats.tokens == len(spec.tokens)
        assert stats.forward_passes <= stats.tokens


def test_trained_model_matches_greedy_and_accepts_proposals(trained, tokenizer):
    total = SpeculativeStats()
    for text in [t[:14] for t in code_corpus(4, seed=11)]:
        prompt = tokenizer.encode(text, bos=True)
        spec, stats = speculative_generate(trained, prompt, max_new_tokens=50, eos_id=tokenizer.eos_id)
        assert spec.tokens == greedy(trained, tokenizer, prompt, 50).tokens
        total.add(stats)
    # Both branches ran: some proposals accepted (fewer passes than tokens), some rejected (cache rolled back).
    accepted, proposed = sum(total.accepted_per_head), sum(total.proposed_per_head)
    assert 0 < accepted < proposed
    assert total.tokens_per_forward > 1.0
    assert total.forward_passes < total.tokens


def test_stop_sequence_ends_speculation_at_the_greedy_token(trained, tokenizer):
    prompt = tokenizer.encode("def sub_xu(x, u):\n", bos=True)
    free = greedy(trained, tokenizer, prompt, 60)
    # Stop strings taken from the greedy text itself, so each one is met somewhere inside a speculated block.
    for stop in [free.text[5:8], free.text[20:22], free.text[30:34], "\n"]:
        ref = greedy(trained, tokenizer, prompt, 60, (stop,))
        spec, _ = speculative_generate(
            trained, prompt, max_new_tokens=60, eos_id=tokenizer.eos_id, tokenizer=tokenizer, stop=(stop,)
        )
        assert spec == ref
        assert ref.finish_reason == FINISH_STOP


def test_token_budget_inside_an_accepted_block(trained, tokenizer):
    prompt = tokenizer.encode("def add_xu(x, u):\n", bos=True)
    for budget in (1, 2, 3, 5, 7):
        spec, stats = speculative_generate(trained, prompt, max_new_tokens=budget, eos_id=tokenizer.eos_id)
        assert spec.tokens == greedy(trained, tokenizer, prompt, budget).tokens
        assert len(spec.tokens) == budget == stats.tokens


def test_one_head_model_is_plain_greedy(tokenizer):
    args = ModelArgs(
        dim=32, n_layers=2, n_heads=4, vocab_size=tokenizer.vocab_size, n_future_tokens=1, multiple_of=16
    )
    model = Transformer(args)
    model.init_weights(torch.Generator().manual_seed(3))
    prompt = tokenizer.encode("def mul_", bos=True)
    spec, stats = speculative_generate(model.eval(), prompt, max_new_tokens=12, eos_id=tokenizer.eos_id)
    assert spec.tokens == greedy(model, tokenizer, prompt, 12).tokens
    assert stats.tokens_per_forward == 1.0
