"""Fitting the extra heads of a one-head-trained model by self-distillation: the trunk and head 1 stay exactly as
they were, held-out acceptance rises, the best epoch is kept, and speculative decoding then accepts proposals
while emitting exactly the greedy tokens."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from wmtp_core.eval.speculative import speculative_generate
from wmtp_core.model import ModelArgs, Transformer
from wmtp_core.tokenizer import Tokenizer, train_tokenizer
from wmtp_core.train.fit_heads import fit_extra_heads, greedy_corpus, held_out_acceptance, padded_prompts

OPS = [("add", "+"), ("sub", "-"), ("mul", "*"), ("div", "/")]


def functions(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        name, sym = rng.choice(OPS)
        a, b = rng.choice("xyzab"), rng.choice("uvwcd")
        out.append(f"def {name}_{a}{b}({a}, {b}):\n    result = {a} {sym} {b}\n    return result\n\n\n")
    return out


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    return Tokenizer(train_tokenizer(functions(300, 0), tmp_path_factory.mktemp("tok") / "f.model", vocab_size=300))


@pytest.fixture()
def model(tokenizer) -> Transformer:
    """Four heads, only head 1 trained (as an imported one-head model is): heads 2..4 propose noise."""
    torch.manual_seed(0)
    m = Transformer(ModelArgs(dim=64, n_layers=6, n_heads=4, vocab_size=tokenizer.vocab_size, n_future_tokens=4,
                              multiple_of=32))  # fmt: skip
    m.init_weights(torch.Generator().manual_seed(0))
    data = torch.tensor(tokenizer.encode("".join(functions(300, 0))))
    opt = torch.optim.AdamW(m.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(80):
        starts = torch.randint(0, len(data) - 48, (8,), generator=g).tolist()
        x = torch.stack([data[s : s + 48] for s in starts])
        loss = F.cross_entropy(m.unembed(m.head(m.trunk(x), 1))[:, :-1].flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def prompts(tokenizer, seed: int) -> list[list[int]]:
    texts = [t.split("\n")[0] + "\n" for t in functions(64, seed)]
    return padded_prompts(texts, tokenizer, multiple=8, pad_text=" ", seed=seed)


def test_padded_prompts_share_lengths_and_keep_the_text(tokenizer):
    (pad,) = tokenizer.encode(" ")
    out = padded_prompts(["def f(a):\n    ", "x = 1"], tokenizer, multiple=8, pad_text=" ")
    assert all(len(p) % 8 == 0 for p in out)
    texts = sorted(tokenizer.decode([t for t in p if t != pad]) for p in out)
    assert texts == sorted(["def f(a):", "x = 1"])  # right-stripped, as the evaluation encodes prompts


def test_fitting_raises_held_out_acceptance_and_leaves_greedy_untouched(model, tokenizer):
    corpus = greedy_corpus(model, tokenizer, prompts(tokenizer, 1), 24, batch_size=16, progress=False)
    unseen = greedy_corpus(model, tokenizer, prompts(tokenizer, 2)[:16], 24, batch_size=16, progress=False)
    assert corpus and all(len(c.ids) > c.start for c in corpus)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("extra_heads.")}
    states = [model.trunk(torch.tensor([c.ids]))[0].detach() for c in unseen]
    before = held_out_acceptance(model, unseen, states)

    report = fit_extra_heads(model, corpus, epochs=5, lr=5e-3, batch_size=4, held_out=0.25, progress=False)

    after = held_out_acceptance(model, unseen, states)
    assert after["tokens_per_forward"] > before["tokens_per_forward"] + 0.3, (before, after)
    assert len(report.held_out) == 5 and len(report.loss_per_head) == 5
    best = max(range(5), key=lambda e: report.held_out[e]["tokens_per_forward"])
    assert report.best_epoch == best + 1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())  # trunk, head 1, unembedding
    assert not any(p.requires_grad for p in model.parameters())

    prompt = prompts(tokenizer, 3)[0]
    spec, stats = speculative_generate(model, prompt, max_new_tokens=24, eos_id=tokenizer.eos_id, tokenizer=tokenizer)
    plain = greedy_corpus(model, tokenizer, [prompt], 24, progress=False)[0]
    assert spec.tokens == plain.ids[plain.start :]
    assert stats.tokens / stats.forward_passes > 1.3

    # The replay counts the forward passes speculative decoding makes on the same continuations.
    passes = tokens = 0
    for c in unseen:
        out, s = speculative_generate(model, c.ids[: c.start], max_new_tokens=24, eos_id=tokenizer.eos_id)
        assert out.tokens == c.ids[c.start :]
        passes, tokens = passes + s.forward_passes, tokens + s.tokens
    assert (after["forward_passes"], after["positions"]) == (passes, tokens)


def test_fitting_rejects_bad_arguments(model, tokenizer):
    with pytest.raises(ValueError, match="pad_text"):
        padded_prompts(["x = 1"], tokenizer, pad_text="\n\n")
    corpus = greedy_corpus(model, tokenizer, prompts(tokenizer, 1)[:4], 8, progress=False)
    with pytest.raises(ValueError, match="held_out"):
        fit_extra_heads(model, corpus, held_out=1.0, progress=False)
    with pytest.raises(ValueError, match="held_out"):
        fit_extra_heads(model, corpus[:1], held_out=0.5, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        fit_extra_heads(model, corpus, epochs=0, progress=False)
    with pytest.raises(ValueError, match="no continuation"):
        fit_extra_heads(model, [], progress=False)
