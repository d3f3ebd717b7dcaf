"""Both decoders are timed alike: untimed warm-up, alternating order, one ratio per repeat, caveats when the ratio
means nothing. Fake decoders advance a fake clock by known costs, so nothing here depends on wall-clock time."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest

from wmtp_core.eval import timing
from wmtp_core.eval.generate import Completion
from wmtp_core.eval.speculative import SpeculativeStats
from wmtp_core.eval.timing import (
    MIN_TIMED_SECONDS,
    compare_with_greedy,
    speedup_caveats,
    time_alternating,
)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_decoder(name: str, cost: float, cold: float, clock: FakeClock, calls: list):
    """Each call advances the clock by `cost`; the first call of the decoder also by `cold` (a cold start)."""

    def run(item):
        clock.now += cost + (cold if not any(c[0] == name for c in calls) else 0.0)
        calls.append((name, item))
        return f"{name}:{item}"

    return run


def test_warmup_is_untimed_and_the_order_alternates():
    clock, calls = FakeClock(), []
    greedy = fake_decoder("greedy", 3.0, cold=100.0, clock=clock, calls=calls)
    spec = fake_decoder("spec", 1.0, cold=100.0, clock=clock, calls=calls)
    t = time_alternating(greedy, spec, ["p0", "p1"], repeats=4, warmup=1, clock=clock)

    # One warm-up round and four timed ones, every item by both decoders.
    assert len(calls) == (1 + 4) * 2 * 2
    assert sorted(calls[:4]) == [("greedy", "p0"), ("greedy", "p1"), ("spec", "p0"), ("spec", "p1")]
    assert (t.repeats, t.warmup) == (4, 1)
    # The cold starts fell into the warm-up: every timed call costs exactly its steady cost.
    assert t.seconds_a == [[3.0, 3.0]] * 4 and t.seconds_b == [[1.0, 1.0]] * 4
    assert t.ratios() == [3.0] * 4
    assert t.round_seconds() == ([6.0] * 4, [2.0] * 4)
    # Who runs first alternates between items and between rounds, so each decoder leads equally often.
    firsts = [calls[j][0] for j in range(4, len(calls), 2)]
    assert firsts == ["greedy", "spec", "spec", "greedy"] * 2
    assert firsts.count("greedy") == firsts.count("spec")
    assert t.outputs_a == ["greedy:p0", "greedy:p1"] and t.outputs_b == ["spec:p0", "spec:p1"]


def test_one_item_alternates_across_repeats_and_each_repeat_gives_a_ratio():
    clock, calls = FakeClock(), []
    # The decoder that runs second finds warm caches and costs 1 less: order must not favour either.
    last = []

    def decoder(name, cost):
        def run(item):
            clock.now += cost - (1.0 if last and last[-1] != name else 0.0)
            last.append(name)
            calls.append(name)
            return name

        return run

    t = time_alternating(decoder("a", 4.0), decoder("b", 2.0), ["only"], repeats=4, warmup=0, clock=clock)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert t.ratios() == [4.0, 1.5, 4.0, 1.5]  # a first: 4/1, b first: 3/2; the discount goes to each in turn
    assert t.item_medians() == ([3.5], [1.5])


def test_bad_arguments_are_refused():
    run = lambda item: item  # noqa: E731
    with pytest.raises(ValueError, match="repeats"):
        time_alternating(run, run, [1], repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        time_alternating(run, run, [1], warmup=-1)
    with pytest.raises(ValueError, match="items"):
        time_alternating(run, run, [])


def summary(**changes):
    base = {
        "identical_to_greedy": True,
        "tokens_per_forward": 2.5,
        "greedy_timed_seconds": 10.0,
        "speculative_timed_seconds": 5.0,
        "repeats": 5,
        "speedup_min": 1.8,
        "speedup_max": 2.2,
    }
    return {**base, **changes}


def test_caveats_name_every_reason_a_speedup_means_nothing():
    assert speedup_caveats(summary()) == []
    (one,) = speedup_caveats(summary(tokens_per_forward=1.0, speedup_min=0.9, speedup_max=0.95))
    assert "1.00 tokens per forward" in one and "cannot beat greedy" in one
    (little,) = speedup_caveats(summary(speculative_timed_seconds=0.012))
    assert "only 12 ms of timed decoding" in little and f"{MIN_TIMED_SECONDS:g} s" in little
    (across,) = speedup_caveats(summary(speedup_min=0.97, speedup_max=1.04))
    assert "0.97x to 1.04x over 5 repeats, a range that includes 1x (no difference)" in across
    (few,) = speedup_caveats(summary(repeats=1))
    assert "1 timed repeat(s)" in few
    (different,) = speedup_caveats(summary(identical_to_greedy=False))
    assert "differs from greedy" in different
    # The demo's figure: one token per forward, 1.79x on a few milliseconds: two reasons, no result.
    demo = summary(
        tokens_per_forward=1.0,
        greedy_timed_seconds=0.009,
        speculative_timed_seconds=0.005,
        speedup_min=1.7,
        speedup_max=1.9,
    )
    assert len(speedup_caveats(demo)) == 2


@pytest.fixture
def fake_decoders(monkeypatch):
    """generate_ids and speculative_generate replaced by decoders of known cost on a fake clock."""
    clock, calls = FakeClock(), {"greedy": 0, "speculative": 0}
    tokens = [5, 6, 7, 8, 9, 10]

    def generate_ids(model, tokenizer, prompts, params, *, batch_size, progress):
        assert batch_size == 1 and len(prompts) == 1 and params.temperature == 0.0
        calls["greedy"] += 1
        clock.now += 0.75
        return [[Completion(tokens=tokens, text="", finish_reason="length")]]

    def speculative_generate(model, prompt, *, max_new_tokens, eos_id, tokenizer, stop):
        calls["speculative"] += 1
        clock.now += 0.25
        stats = SpeculativeStats(
            tokens=6, forward_passes=2, accepted_per_head=[2, 1, 1], proposed_per_head=[2, 2, 2]
        )
        return Completion(tokens=tokens, text="", finish_reason="length"), stats

    monkeypatch.setattr(timing, "generate_ids", generate_ids)
    monkeypatch.setattr(timing, "speculative_generate", speculative_generate)
    monkeypatch.setattr(timing, "time_alternating", functools.partial(time_alternating, clock=clock))
    return calls


def test_compare_with_greedy_times_both_decoders_through_the_shared_timer(fake_decoders):
    model, tok = SimpleNamespace(n_future=4), SimpleNamespace(eos_id=2)
    spec, rows = compare_with_greedy(model, tok, [[1, 3], [1, 4]], max_new_tokens=6, repeats=3, warmup=2)
    assert fake_decoders == {"greedy": (2 + 3) * 2, "speculative": (2 + 3) * 2}
    assert (spec["repeats"], spec["warmup"], spec["order"]) == (3, 2, "alternating")
    assert spec["speedup_per_repeat"] == [3.0] * 3
    assert (spec["speedup_median"], spec["speedup_min"], spec["speedup_max"]) == (3.0, 3.0, 3.0)
    assert (spec["greedy_seconds"], spec["speculative_seconds"]) == (1.5, 0.5)
    assert (spec["greedy_timed_seconds"], spec["speculative_timed_seconds"]) == (4.5, 1.5)
    assert spec["tokens"] == 12 and spec["tokens_per_forward"] == 3.0 and spec["identical_to_greedy"]
    assert spec["speedup"] == 3.0 and spec["speedup_not_meaningful"] is None
    assert (
        rows
        == [
            {
                "tokens": 6,
                "forward_passes": 2,
                "greedy_seconds": 0.75,
                "speculative_seconds": 0.25,
                "identical": True,
                "completion": "",  # the fake decoders' text
            }
        ]
        * 2
    )


def test_compare_with_greedy_withholds_a_speedup_at_one_token_per_forward(fake_decoders, monkeypatch):
    one_per_pass = SpeculativeStats(
        tokens=6, forward_passes=6, accepted_per_head=[0] * 3, proposed_per_head=[5] * 3
    )
    spec_generate = timing.speculative_generate

    def rejecting(*args, **kwargs):
        completion, _ = spec_generate(*args, **kwargs)
        return completion, one_per_pass

    monkeypatch.setattr(timing, "speculative_generate", rejecting)
    model, tok = SimpleNamespace(n_future=4), SimpleNamespace(eos_id=2)
    spec, _ = compare_with_greedy(model, tok, [[1, 3]], max_new_tokens=6, repeats=3, warmup=1)
    assert spec["tokens_per_forward"] == 1.0
    assert spec["speedup_median"] == 3.0  # measured, kept, but no result:
    assert spec["speedup"] is None and "1.00 tokens per forward" in spec["speedup_not_meaningful"]
