"""KV-cache sampling: top-p, stop sequences, token budget, seeds, batching equal to decoding alone."""

from __future__ import annotations

import pytest
import torch

from wmtp_core.eval.generate import (
    FINISH_EOS,
    FINISH_LENGTH,
    FINISH_STOP,
    NUCLEUS_CANDIDATES,
    Detokenizer,
    SamplingParams,
    StopCriteria,
    generate,
    generate_ids,
    sample_next,
    top_p_filter,
)
from wmtp_core.model.args import ModelArgs
from wmtp_core.model.transformer import Transformer
from wmtp_core.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(llama2_tokenizer) -> Tokenizer:
    return Tokenizer(llama2_tokenizer)


@pytest.fixture(scope="module")
def model(tokenizer) -> Transformer:
    args = ModelArgs(
        dim=32,
        n_layers=3,
        n_heads=4,
        vocab_size=tokenizer.vocab_size,
        n_future_tokens=2,
        multiple_of=16,
        max_seq_len=128,
    )
    m = Transformer(args).eval()
    # A wide init spreads the logits, so sampled and greedy continuations differ visibly from row to row.
    m.init_weights(torch.Generator().manual_seed(0), std=0.3)
    return m


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    torch.testing.assert_close(top_p_filter(probs, 0.7), torch.tensor([[0.0, 0.625, 0.0, 0.375]]))
    # 0.5 alone reaches p=0.5, so the next token is cut.
    torch.testing.assert_close(top_p_filter(probs, 0.5), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    # The token that crosses p stays: 0.5 + 0.3 < 0.81, so 0.15 is needed too.
    torch.testing.assert_close(top_p_filter(probs, 0.81), torch.tensor([[0.15, 0.5, 0.0, 0.3]]) / 0.95)
    torch.testing.assert_close(top_p_filter(probs, 1.0), probs)
    # A tiny p still keeps the most probable token.
    torch.testing.assert_close(top_p_filter(probs, 1e-6), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))


def test_top_p_over_a_large_vocabulary_equals_a_full_sort():
    """Rows whose nucleus lies within the NUCLEUS_CANDIDATES most probable tokens take the topk path, the others
    the full sort; both give exactly what a full sort gives, in one batch."""
    vocab = 4 * NUCLEUS_CANDIDATES
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(0))
    logits[0] *= 12.0  # peaked: a nucleus of a few tokens
    logits[2, :5] += 20.0  # five tokens hold nearly all the mass
    probs = torch.softmax(logits, dim=-1)  # row 1 stays flat: its nucleus is most of the vocabulary
    for top_p in (0.5, 0.95):
        ordered, order = torch.sort(probs, dim=-1, descending=True)
        cut = ordered.masked_fill(torch.cumsum(ordered, dim=-1) - ordered >= top_p, 0.0)
        expected = torch.zeros_like(probs).scatter(-1, order, cut)
        expected = expected / expected.sum(dim=-1, keepdim=True)
        assert torch.equal(top_p_filter(probs, top_p), expected)
        assert (top_p_filter(probs[[0, 2]], top_p) > 0).sum(dim=-1).max() < NUCLEUS_CANDIDATES
    assert (top_p_filter(probs[1:2], 0.95) > 0).sum() > NUCLEUS_CANDIDATES


def test_sampling_draws_only_the_nucleus_in_proportion():
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])
    logits = probs.log().expand(20000, 4)
    draws = sample_next(logits, temperature=1.0, top_p=0.7, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=4).float() / draws.numel()
    assert counts[0] == 0 and counts[2] == 0
    assert abs(counts[1].item() - 0.625) < 0.02 and abs(counts[3].item() - 0.375) < 0.02


def test_temperature_zero_is_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0], [5.0, 0.0, 4.9]])
    assert sample_next(logits, 0.0, 1.0).tolist() == [1, 0]


def test_detokenizer_keeps_leading_indentation(tokenizer):
    prompt = tokenizer.encode("def f(x):\n", bos=True)
    full = tokenizer.encode("def f(x):\n    return x", bos=True)
    assert full[: len(prompt)] == prompt
    assert Detokenizer(tokenizer, prompt).text(full[len(prompt) :]) == "    return x"


def test_stop_criteria_eos_stop_and_length(tokenizer):
    prompt = tokenizer.encode("x = 1\n", bos=True)
    crit = StopCriteria(Detokenizer(tokenizer, prompt), tokenizer.eos_id, ("\ndef",), max_new_tokens=50)
    body = tokenizer.encode("x = 1\ny = 2\ndef g():", bos=True)[len(prompt) :]
    assert crit.finish_reason(body[:2]) is None
    assert crit.finish_reason(body) == FINISH_STOP
    assert crit.completion(body, FINISH_STOP).text == "y = 2"
    with_eos = tokenizer.encode("x = 1\ny = 2", bos=True)[len(prompt) :] + [tokenizer.eos_id]
    assert crit.finish_reason(with_eos) == FINISH_EOS
    done = crit.completion(with_eos, FINISH_EOS)
    assert done.text == "y = 2" and done.tokens[-1] == tokenizer.eos_id
    short = StopCriteria(Detokenizer(tokenizer, prompt), tokenizer.eos_id, (), max_new_tokens=3)
    assert short.finish_reason(body[:3]) == FINISH_LENGTH


def test_max_new_tokens_bounds_every_completion(model, tokenizer):
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=7, seed=3)
    out = generate(model, tokenizer, ["def f(a):\n", "import sys\n"], params, n=3, progress=False)
    assert [len(row) for row in out] == [3, 3]
    for c in (c for row in out for c in row):
        assert len(c.tokens) <= 7
        assert (c.finish_reason == FINISH_LENGTH) == (len(c.tokens) == 7 and c.tokens[-1] != tokenizer.eos_id)


def test_stop_sequence_cuts_greedy_text_at_first_occurrence(model, tokenizer):
    prompt = ["def add(a, b):\n"]
    free = generate(model, tokenizer, prompt, SamplingParams(max_new_tokens=40), progress=False)[0][0]
    assert free.finish_reason == FINISH_LENGTH and len(free.text) > 20
    stop = free.text[12:16]
    first = free.text.find(stop)
    cut = generate(model, tokenizer, prompt, SamplingParams(max_new_tokens=40, stop=(stop,)), progress=False)[
        0
    ][0]
    assert cut.finish_reason == FINISH_STOP
    assert cut.text == free.text[:first]
    # Decoding stopped at the token that completed the stop sequence, not later.
    assert cut.tokens == free.tokens[: len(cut.tokens)]
    assert stop in Detokenizer(tokenizer, tokenizer.encode(prompt[0], bos=True)).text(cut.tokens)
    assert stop not in Detokenizer(tokenizer, tokenizer.encode(prompt[0], bos=True)).text(cut.tokens[:-1])


def test_same_seed_same_samples_other_seed_other_samples(model, tokenizer):
    prompts = ["def f(a):\n", "class A:\n"]
    run = lambda seed: generate(  # noqa: E731
        model,
        tokenizer,
        prompts,
        SamplingParams(temperature=1.0, max_new_tokens=12, seed=seed),
        n=4,
        progress=False,
    )
    first, again, other = run(0), run(0), run(1)
    assert first == again
    assert first != other
    # The samples of one prompt are not all alike (temperature 1).
    assert len({tuple(c.tokens) for c in first[0]}) > 1


def test_batched_rows_decode_as_they_would_alone(model, tokenizer):
    # Prompts of 4 to 12 tokens share batches (left-padded, the padding masked); stop sequences make rows finish
    # at different steps, so finished rows leave the cache mid-way. Each row must still match decoding it alone.
    g = torch.Generator().manual_seed(1)
    prompts = [
        [tokenizer.bos_id] + torch.randint(300, 20000, (n,), generator=g).tolist() for n in (9, 3, 11, 5, 9)
    ]
    prompts.append(prompts[0][:6])
    params = SamplingParams(max_new_tokens=25, stop=("e", "a"))
    batched = generate_ids(model, tokenizer, prompts, params, batch_size=8, progress=False)
    alone = [generate_ids(model, tokenizer, [p], params, batch_size=1, progress=False)[0] for p in prompts]
    assert batched == alone
    assert len({len(row[0].tokens) for row in batched}) > 1


def test_left_padded_rows_attend_as_unpadded(model):
    # The cache's pad mask: a row padded on the left gives the logits it gives alone, in prefill and decoding.

    g = torch.Generator().manual_seed(2)
    short, long = torch.randint(5, 300, (1, 4), generator=g), torch.randint(5, 300, (1, 9), generator=g)
    batch = torch.cat([torch.cat([torch.zeros(1, 5, dtype=torch.long), short], 1), long])
    cache = model.new_cache(2, 12)
    cache.pad = torch.zeros(2, 12, dtype=torch.bool)
    cache.pad[0, :5] = True
    with torch.inference_mode():
        padded = model(batch, cache=cache)[:, -1]
        step = model(torch.tensor([[7], [8]]), start_pos=9, cache=cache)[:, 0]
        for row, (ids, nxt) in enumerate(((short, 7), (long, 8))):
            alone_cache = model.new_cache(1, 12)
            alone = model(ids, cache=alone_cache)[:, -1]
            alone_step = model(torch.tensor([[nxt]]), start_pos=ids.shape[1], cache=alone_cache)[:, 0]
            torch.testing.assert_close(padded[row], alone[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(step[row], alone_step[0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(padded).all()


def test_samples_of_one_prompt_share_its_prefill(model, tokenizer):
    # n rows of one prompt are prefilled once and copied; greedy rows must then all equal the single decode.
    params = SamplingParams(max_new_tokens=10)
    many = generate(model, tokenizer, ["def g(x):\n"], params, n=4, progress=False)[0]
    one = generate(model, tokenizer, ["def g(x):\n"], params, n=1, progress=False)[0][0]
    assert all(c == one for c in many)


def test_prompt_longer_than_context_is_refused(model, tokenizer):
    with pytest.raises(ValueError, match="max_seq_len 128"):
        generate_ids(model, tokenizer, [[1] * 100], SamplingParams(max_new_tokens=40), progress=False)


def test_invalid_sampling_params_name_the_field():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="stop"):
        SamplingParams(stop=("",))
