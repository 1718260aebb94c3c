"""Tests for certaindex.core.signals: hand-computed values, edge cases, validation and properties."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certaindex.core.signals import (
    ProbeObservation,
    TraceConfidence,
    Vote,
    aggregate_rewards,
    cluster_answers,
    entropy_certaindex,
    group_confidences,
    majority_vote,
    mean_token_entropy,
    probe_certaindex,
    probes_agree,
    reward_certaindex,
    semantic_entropy,
    token_confidence,
    token_entropy,
    trace_confidence,
    vote_margin,
)

# Per-test settings (not a global profile, which would leak into other test modules):
# quick on a shared machine, and no example database written into the working tree.
fast = settings(max_examples=60, deadline=None, database=None)


def eq(a: str, b: str) -> bool:
    return a == b


def num_eq(a: str, b: str) -> bool:
    """Numeric equivalence, so "0.5" and "1/2" style variants can be simulated with floats."""
    try:
        return math.isclose(float(a), float(b))
    except ValueError:
        return a.strip() == b.strip()


def P(answer: str | None, hesitant: bool = False) -> ProbeObservation:
    return ProbeObservation(answer=answer, hesitant=hesitant)


# Small alphabets make collisions (agreement) common in generated data.
answer_st = st.one_of(st.none(), st.sampled_from(["", "  ", "1", "2", "3", "1.0", "x"]))
probe_st = st.builds(ProbeObservation, answer=answer_st, hesitant=st.booleans())
sizes_st = st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=8)


# --------------------------------------------------------------------------- probes


class TestProbes:
    def test_observation_is_frozen(self):
        probe = P("1")
        with pytest.raises(AttributeError):
            probe.answer = "2"  # type: ignore[misc]

    def test_agree_when_last_k_match(self):
        probes = [P("7"), P("3"), P("3"), P("3")]
        assert probes_agree(probes, 3, eq)
        assert probe_certaindex(probes, 3, eq) == 1.0

    def test_not_enough_probes(self):
        probes = [P("3"), P("3")]
        assert not probes_agree(probes, 3, eq)
        assert probe_certaindex(probes, 3, eq) == pytest.approx(2 / 3)

    def test_empty_sequence(self):
        assert not probes_agree([], 1, eq)
        assert probe_certaindex([], 1, eq) == 0.0

    def test_run_broken_by_different_answer(self):
        probes = [P("3"), P("3"), P("4"), P("3"), P("3")]
        assert not probes_agree(probes, 3, eq)
        assert probe_certaindex(probes, 3, eq) == pytest.approx(2 / 3)
        assert probe_certaindex(probes, 4, eq) == pytest.approx(2 / 4)

    def test_run_broken_by_hesitant_probe(self):
        probes = [P("3"), P("3", hesitant=True), P("3"), P("3")]
        assert not probes_agree(probes, 3, eq)
        assert probe_certaindex(probes, 3, eq) == pytest.approx(2 / 3)
        assert probes_agree(probes, 2, eq)

    def test_run_broken_by_missing_answer(self):
        for missing in (None, "", "   \n"):
            probes = [P("3"), P(missing), P("3"), P("3")]
            assert not probes_agree(probes, 3, eq)
            assert probe_certaindex(probes, 3, eq) == pytest.approx(2 / 3)

    @pytest.mark.parametrize("latest", [P(None), P(""), P(" \t"), P("3", hesitant=True)])
    def test_latest_empty_or_hesitant_gives_zero(self, latest):
        probes = [P("3"), P("3"), P("3"), latest]
        assert probe_certaindex(probes, 2, eq) == 0.0
        assert not probes_agree(probes, 1, eq)

    def test_k_one_needs_only_a_confident_answer(self):
        assert probes_agree([P("9"), P("3")], 1, eq)
        assert probe_certaindex([P("9"), P("3")], 1, eq) == 1.0

    def test_capped_at_one(self):
        probes = [P("3")] * 10
        assert probe_certaindex(probes, 3, eq) == 1.0

    def test_uses_injected_equivalence(self):
        probes = [P("0.5"), P("0.50"), P(".5")]
        assert not probes_agree(probes, 3, eq)
        assert probes_agree(probes, 3, num_eq)

    def test_compares_to_latest_not_neighbour(self):
        # "close" is not transitive: each neighbour is within 1 of the next, but 1 and 3 are not.
        def close(a: str, b: str) -> bool:
            return abs(float(a) - float(b)) <= 1

        probes = [P("1"), P("2"), P("3")]
        assert not probes_agree(probes, 3, close)
        assert probe_certaindex(probes, 3, close) == pytest.approx(2 / 3)

    def test_equal_called_with_latest_first(self):
        calls: list[tuple[str, str]] = []

        def spy(a: str, b: str) -> bool:
            calls.append((a, b))
            return True

        probes_agree([P("a"), P("b"), P("c")], 3, spy)
        assert calls and all(first == "c" for first, _ in calls)

    @pytest.mark.parametrize("k", [0, -1, 1.5, True, None])
    def test_invalid_k(self, k):
        with pytest.raises(ValueError, match="k"):
            probes_agree([P("1")], k, eq)
        with pytest.raises(ValueError, match="k"):
            probe_certaindex([P("1")], k, eq)

    @fast
    @given(st.lists(probe_st, max_size=8), st.integers(min_value=1, max_value=5))
    def test_agree_iff_certaindex_is_one(self, probes, k):
        value = probe_certaindex(probes, k, eq)
        assert 0.0 <= value <= 1.0
        assert probes_agree(probes, k, eq) == (value == 1.0)

    @fast
    @given(st.lists(probe_st, max_size=8), st.integers(min_value=1, max_value=5))
    def test_certaindex_matches_naive_definition(self, probes, k):
        def ok(p):
            return p.answer is not None and p.answer.strip() != "" and not p.hesitant

        run = 0
        if probes and ok(probes[-1]):
            for p in reversed(probes):
                if ok(p) and p.answer == probes[-1].answer:
                    run += 1
                else:
                    break
        assert probe_certaindex(probes, k, eq) == min(run, k) / k
        naive_agree = len(probes) >= k and all(
            ok(p) and p.answer == probes[-1].answer for p in probes[-k:]
        )
        assert probes_agree(probes, k, eq) == naive_agree


# --------------------------------------------------------------------------- clustering and votes


class TestClusterAnswers:
    def test_hand_example(self):
        answers = ["b", "a", None, "a", "b", "c", "a", ""]
        assert cluster_answers(answers, eq) == [[1, 3, 6], [0, 4], [5]]

    def test_ties_by_first_index(self):
        assert cluster_answers(["x", "y", "y", "x", "z"], eq) == [[0, 3], [1, 2], [4]]

    def test_empty_and_missing(self):
        assert cluster_answers([], eq) == []
        assert cluster_answers([None, "", "  "], eq) == []

    def test_greedy_joins_first_matching_representative(self):
        def close(a: str, b: str) -> bool:
            return abs(float(a) - float(b)) <= 1

        # "2" matches representative "1" (first cluster) even though it also matches "3".
        # "3" does not match "1", so founds its own cluster; "4" matches "3" only.
        assert cluster_answers(["1", "3", "2", "4"], close) == [[0, 2], [1, 3]]

    def test_equivalence_injected(self):
        assert cluster_answers(["0.5", ".5", "1"], num_eq) == [[0, 1], [2]]
        assert cluster_answers(["0.5", ".5", "1"], eq) == [[0], [1], [2]]

    @fast
    @given(st.lists(answer_st, max_size=15))
    def test_partitions_exactly_the_answered_indices(self, answers):
        clusters = cluster_answers(answers, eq)
        flat = [i for c in clusters for i in c]
        answered = [i for i, a in enumerate(answers) if a is not None and a.strip()]
        assert sorted(flat) == answered
        assert len(flat) == len(set(flat))
        for cluster in clusters:
            assert cluster == sorted(cluster)
            assert len({answers[i] for i in cluster}) == 1
        reps = [answers[c[0]] for c in clusters]
        assert len(set(reps)) == len(reps)
        keys = [(-len(c), c[0]) for c in clusters]
        assert keys == sorted(keys)

    @fast
    @given(st.lists(answer_st, max_size=15), st.randoms(use_true_random=False))
    def test_permutation_invariant_sizes_and_certaindex(self, answers, rnd):
        shuffled = list(answers)
        rnd.shuffle(shuffled)
        a = majority_vote(answers, eq)
        b = majority_vote(shuffled, eq)
        assert [len(c) for c in a.clusters] == [len(c) for c in b.clusters]
        assert a.certaindex == pytest.approx(b.certaindex, abs=1e-12)
        assert a.margin == pytest.approx(b.margin, abs=1e-12)


class TestEntropy:
    def test_hand_computed_2_1_1(self):
        expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
        assert semantic_entropy([2, 1, 1]) == pytest.approx(expected)
        assert expected == pytest.approx(1.5 * math.log(2))

    def test_single_cluster_is_zero(self):
        assert semantic_entropy([5]) == 0.0

    def test_uniform_is_log_n(self):
        assert semantic_entropy([3, 3, 3, 3]) == pytest.approx(math.log(4))

    def test_order_does_not_matter(self):
        assert semantic_entropy([1, 2, 5]) == pytest.approx(semantic_entropy([5, 1, 2]))

    @pytest.mark.parametrize("sizes", [[], [0], [2, -1], [1.5], [True], ["2"]])
    def test_invalid_sizes(self, sizes):
        with pytest.raises(ValueError):
            semantic_entropy(sizes)

    def test_accepts_numpy_ints(self):
        assert semantic_entropy(np.array([2, 1, 1])) == pytest.approx(1.5 * math.log(2))

    @fast
    @given(sizes_st)
    def test_bounds(self, sizes):
        h = semantic_entropy(sizes)
        assert 0.0 <= h <= math.log(len(sizes)) + 1e-12


class TestEntropyCertaindex:
    def test_all_agree_is_one(self):
        assert entropy_certaindex([8], 8) == 1.0

    def test_all_distinct_is_zero(self):
        assert entropy_certaindex([1] * 6, 6) == pytest.approx(0.0, abs=1e-12)

    def test_hand_computed(self):
        h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
        assert entropy_certaindex([2, 1, 1], 4) == pytest.approx(1 - h / math.log(4))
        assert entropy_certaindex([2, 1, 1], 4) == pytest.approx(0.25)

    def test_missing_answers_are_singletons(self):
        # 3 agree, one sample had no answer: same as sizes [3, 1].
        assert entropy_certaindex([3], 4) == pytest.approx(entropy_certaindex([3, 1], 4))
        assert entropy_certaindex([3], 4) < 1.0
        # No answers at all: all singletons.
        assert entropy_certaindex([], 5) == pytest.approx(0.0, abs=1e-12)

    def test_single_sample(self):
        assert entropy_certaindex([1], 1) == 1.0
        assert entropy_certaindex([], 1) == 0.0

    def test_more_agreement_more_certain(self):
        assert entropy_certaindex([4, 1], 5) > entropy_certaindex([3, 2], 5) > entropy_certaindex([2, 2, 1], 5)

    @pytest.mark.parametrize(
        ("sizes", "n"), [([], 0), ([1], 0), ([3], 2), ([0], 3), ([-1], 3), ([1], 2.0), ([1], True)]
    )
    def test_invalid(self, sizes, n):
        with pytest.raises(ValueError):
            entropy_certaindex(sizes, n)

    @fast
    @given(sizes_st, st.integers(min_value=0, max_value=10))
    def test_in_unit_interval_and_one_iff_single_full_cluster(self, sizes, missing):
        n = sum(sizes) + missing
        value = entropy_certaindex(sizes, n)
        assert 0.0 <= value <= 1.0
        assert (value == 1.0) == (len(sizes) == 1 and missing == 0)


class TestVoteMargin:
    def test_hand_computed(self):
        assert vote_margin([5, 3, 2], 10) == pytest.approx(0.2)
        assert vote_margin([2, 5, 3], 10) == pytest.approx(0.2)  # unsorted input

    def test_single_cluster(self):
        assert vote_margin([4], 4) == 1.0
        assert vote_margin([3], 4) == pytest.approx(0.75)

    def test_tie_and_empty(self):
        assert vote_margin([3, 3], 6) == 0.0
        assert vote_margin([], 3) == 0.0

    @pytest.mark.parametrize(("sizes", "n"), [([1], 0), ([4], 3), ([0, 1], 3)])
    def test_invalid(self, sizes, n):
        with pytest.raises(ValueError):
            vote_margin(sizes, n)

    @fast
    @given(sizes_st, st.integers(min_value=0, max_value=10))
    def test_in_unit_interval(self, sizes, missing):
        assert 0.0 <= vote_margin(sizes, sum(sizes) + missing) <= 1.0


class TestMajorityVote:
    def test_plurality(self):
        vote = majority_vote(["2", "3", "3", None, "2", "3"], eq)
        assert isinstance(vote, Vote)
        assert vote.answer == "3"
        assert vote.count == 3
        assert vote.n_samples == 6
        assert vote.clusters == [[1, 2, 5], [0, 4]]
        assert vote.certaindex == pytest.approx(entropy_certaindex([3, 2], 6))
        assert vote.margin == pytest.approx(1 / 6)

    def test_answer_is_representative(self):
        vote = majority_vote(["1/2", "0.5", "0.50", "1"], num_eq)
        # "1/2" is not a float, so it is its own cluster; "0.5" represents the winner.
        assert vote.answer == "0.5"
        assert vote.count == 2

    def test_tie_goes_to_earlier_cluster(self):
        assert majority_vote(["a", "b", "b", "a"], eq).answer == "a"

    def test_weights_override_plurality(self):
        answers = ["a", "b", "b"]
        vote = majority_vote(answers, eq, weights=[5.0, 1.0, 1.0])
        assert vote.answer == "a"
        assert vote.count == 1
        # certaindex and margin stay on unweighted sizes.
        assert vote.certaindex == pytest.approx(entropy_certaindex([2, 1], 3))
        assert vote.margin == pytest.approx(1 / 3)

    def test_weights_sum_per_cluster(self):
        vote = majority_vote(["a", "b", "b"], eq, weights=[1.5, 1.0, 1.0])
        assert vote.answer == "b"

    def test_all_agree(self):
        vote = majority_vote(["7"] * 4, eq)
        assert (vote.answer, vote.count, vote.certaindex, vote.margin) == ("7", 4, 1.0, 1.0)

    def test_no_answers(self):
        vote = majority_vote([None, "", None], eq)
        assert vote.answer is None
        assert vote.count == 0
        assert vote.n_samples == 3
        assert vote.clusters == []
        assert vote.certaindex == 0.0
        assert vote.margin == 0.0

    def test_no_samples_is_an_empty_vote(self):
        # Programs build an initial vote before the first round.
        vote = majority_vote([], eq)
        assert (vote.answer, vote.count, vote.n_samples, vote.clusters) == (None, 0, 0, [])
        assert vote.certaindex == 0.0 and vote.margin == 0.0

    @pytest.mark.parametrize("weights", [[1.0], [1.0, -1.0], [1.0, float("nan")], [1.0, float("inf")]])
    def test_invalid_weights(self, weights):
        with pytest.raises(ValueError, match="weights"):
            majority_vote(["a", "b"], eq, weights=weights)

    @fast
    @given(st.lists(answer_st, min_size=1, max_size=15))
    def test_signals_in_unit_interval_and_winner_is_plurality(self, answers):
        vote = majority_vote(answers, eq)
        assert 0.0 <= vote.certaindex <= 1.0
        assert 0.0 <= vote.margin <= 1.0
        answered = Counter(a for a in answers if a is not None and a.strip())
        if answered:
            assert vote.count == max(answered.values())
            assert answered[vote.answer] == vote.count
        else:
            assert vote.answer is None

    @fast
    @given(st.lists(st.tuples(answer_st, st.floats(min_value=0, max_value=10)), min_size=1, max_size=12))
    def test_weighted_winner_is_heaviest(self, pairs):
        answers = [a for a, _ in pairs]
        weights = [w for _, w in pairs]
        vote = majority_vote(answers, eq, weights=weights)
        totals: dict[str, float] = {}
        for a, w in pairs:
            if a is not None and a.strip():
                totals[a] = totals.get(a, 0.0) + w
        if totals:
            assert totals[vote.answer] >= max(totals.values()) - 1e-9
        else:
            assert vote.answer is None


# --------------------------------------------------------------------------- token level


logprob_maps = st.dictionaries(
    st.text(min_size=1, max_size=3), st.floats(min_value=-30, max_value=0), min_size=1, max_size=10
)


class TestTokenEntropy:
    def test_single_entry_is_zero(self):
        assert token_entropy({"a": -0.3}) == 0.0

    def test_uniform_is_log_k(self):
        lp = math.log(0.25)
        assert token_entropy({t: lp for t in "abcd"}) == pytest.approx(math.log(4))

    def test_renormalised(self):
        # Top-2 of probabilities 0.3 and 0.1 renormalise to 0.75 / 0.25.
        expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
        assert token_entropy({"a": math.log(0.3), "b": math.log(0.1)}) == pytest.approx(expected)

    def test_scale_invariant(self):
        base = {"a": math.log(0.5), "b": math.log(0.2), "c": math.log(0.1)}
        shifted = {t: v - 5.0 for t, v in base.items()}
        assert token_entropy(base) == pytest.approx(token_entropy(shifted))

    def test_neg_inf_entry_has_no_mass(self):
        assert token_entropy({"a": -0.1, "b": float("-inf")}) == 0.0

    @pytest.mark.parametrize(
        "bad",
        [{}, {"a": float("nan")}, {"a": float("inf")}, {"a": 0.5}, {"a": float("-inf")}, {"a": "x"}],
    )
    def test_invalid(self, bad):
        with pytest.raises(ValueError):
            token_entropy(bad)

    @fast
    @given(logprob_maps)
    def test_bounded_by_log_k(self, top):
        h = token_entropy(top)
        assert 0.0 <= h <= math.log(len(top))

    def test_mean_token_entropy(self):
        lp = math.log(0.5)
        seq = [{"a": -0.1}, {"a": lp, "b": lp}]
        assert mean_token_entropy(seq) == pytest.approx(math.log(2) / 2)
        with pytest.raises(ValueError):
            mean_token_entropy([])


class TestTokenConfidence:
    def test_hand_computed(self):
        assert token_confidence({"a": -0.1, "b": -2.0, "c": -3.9}) == pytest.approx(2.0)

    def test_peaked_more_confident_than_flat(self):
        flat = {t: math.log(0.25) for t in "abcd"}
        peaked = {"a": math.log(0.97), "b": math.log(0.01), "c": math.log(0.01), "d": math.log(0.01)}
        assert token_confidence(peaked) > token_confidence(flat)

    def test_single_certain_token(self):
        assert token_confidence({"a": 0.0}) == 0.0

    @pytest.mark.parametrize("bad", [{}, {"a": float("-inf")}, {"a": float("nan")}, {"a": 1.0}])
    def test_invalid(self, bad):
        with pytest.raises(ValueError):
            token_confidence(bad)

    @fast
    @given(logprob_maps)
    def test_non_negative(self, top):
        assert token_confidence(top) >= 0.0


def naive_groups(confs: list[float], window: int) -> list[float]:
    n = len(confs)
    if n < window:
        return [sum(confs) / n]
    return [sum(confs[i : i + window]) / window for i in range(n - window + 1)]


class TestGroupConfidences:
    def test_hand_computed(self):
        np.testing.assert_allclose(group_confidences([1, 2, 3, 4], 2), [1.5, 2.5, 3.5])

    def test_window_one_is_identity(self):
        np.testing.assert_allclose(group_confidences([3.0, 1.0, 2.0], 1), [3.0, 1.0, 2.0])

    def test_short_trace_single_mean(self):
        out = group_confidences([1.0, 2.0], 5)
        assert isinstance(out, np.ndarray)
        np.testing.assert_allclose(out, [1.5])

    def test_window_equals_length(self):
        np.testing.assert_allclose(group_confidences([1.0, 2.0, 6.0], 3), [3.0])

    @pytest.mark.parametrize(("confs", "window"), [([], 2), ([1.0], 0), ([1.0], 1.5), ([float("nan")], 1)])
    def test_invalid(self, confs, window):
        with pytest.raises(ValueError):
            group_confidences(confs, window)

    @fast
    @given(
        st.lists(st.floats(min_value=0, max_value=50), min_size=1, max_size=60),
        st.integers(min_value=1, max_value=20),
    )
    def test_equals_naive(self, confs, window):
        out = group_confidences(confs, window)
        assert len(out) == max(1, len(confs) - window + 1)
        np.testing.assert_allclose(out, naive_groups(confs, window), rtol=1e-9, atol=1e-9)


class TestTraceConfidence:
    def test_hand_computed(self):
        confs = [5.0, 5.0, 1.0, 1.0, 5.0, 5.0, 3.0, 3.0]
        tc = trace_confidence(confs, window=2, tail_tokens=3, bottom_fraction=0.3)
        assert isinstance(tc, TraceConfidence)
        assert tc.mean == pytest.approx(3.5)
        # Groups: 5,3,1,3,5,4,3 -> lowest 1; bottom floor(0.3*7)=2 groups -> (1+3)/2.
        assert tc.lowest_group == pytest.approx(1.0)
        assert tc.bottom_fraction == pytest.approx(2.0)
        assert tc.tail == pytest.approx((5 + 3 + 3) / 3)

    def test_at_least_one_group(self):
        tc = trace_confidence([4.0, 2.0, 6.0], window=1, bottom_fraction=0.01)
        assert tc.bottom_fraction == pytest.approx(2.0)

    def test_fraction_not_lost_to_rounding(self):
        # 0.29 * 100 is 28.999999999999996 in floating point: still 29 groups.
        confs = list(range(100))
        tc = trace_confidence(confs, window=1, bottom_fraction=0.29)
        assert tc.bottom_fraction == pytest.approx(sum(range(29)) / 29)

    def test_defaults_on_short_trace(self):
        tc = trace_confidence([1.0, 2.0, 3.0])
        assert tc == TraceConfidence(mean=2.0, lowest_group=2.0, bottom_fraction=2.0, tail=2.0)

    def test_full_fraction_is_mean_of_groups(self):
        confs = [1.0, 4.0, 2.0, 8.0]
        tc = trace_confidence(confs, window=2, bottom_fraction=1.0)
        assert tc.bottom_fraction == pytest.approx(np.mean(naive_groups(confs, 2)))

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"window": 0},
            {"tail_tokens": 0},
            {"bottom_fraction": 0.0},
            {"bottom_fraction": 1.5},
            {"bottom_fraction": float("nan")},
            {"bottom_fraction": -0.1},
        ],
    )
    def test_invalid_parameters(self, kwargs):
        with pytest.raises(ValueError):
            trace_confidence([1.0, 2.0], **kwargs)

    def test_empty(self):
        with pytest.raises(ValueError, match="token_confs"):
            trace_confidence([])

    @fast
    @given(
        st.lists(st.floats(min_value=0, max_value=50), min_size=1, max_size=40),
        st.integers(min_value=1, max_value=10),
        st.integers(min_value=1, max_value=10),
        st.floats(min_value=0.01, max_value=1.0),
    )
    def test_orderings(self, confs, window, tail, fraction):
        tc = trace_confidence(confs, window=window, tail_tokens=tail, bottom_fraction=fraction)
        groups = naive_groups(confs, window)
        assert tc.lowest_group == pytest.approx(min(groups))
        assert tc.lowest_group - 1e-9 <= tc.bottom_fraction <= np.mean(groups) + 1e-9
        assert min(confs) - 1e-9 <= tc.mean <= max(confs) + 1e-9
        assert tc.tail == pytest.approx(np.mean(confs[-tail:]))


# --------------------------------------------------------------------------- rewards


class TestRewards:
    @pytest.mark.parametrize(
        ("how", "expected"), [("min", 0.2), ("last", 0.6), ("mean", 0.6), ("prod", 0.9 * 0.2 * 0.6 * 0.7 * 0.6)]
    )
    def test_aggregate(self, how, expected):
        assert aggregate_rewards([0.9, 0.2, 0.6, 0.7, 0.6], how) == pytest.approx(expected)

    def test_default_is_min(self):
        assert aggregate_rewards([0.9, 0.3, 0.8]) == pytest.approx(0.3)

    @pytest.mark.parametrize(
        ("rewards", "how"), [([], "min"), ([0.5], "max"), ([float("nan")], "min"), ([float("inf")], "mean")]
    )
    def test_aggregate_invalid(self, rewards, how):
        with pytest.raises(ValueError):
            aggregate_rewards(rewards, how)

    def test_reward_certaindex_is_mean(self):
        assert reward_certaindex([0.2, 0.4, 0.9]) == pytest.approx(0.5)
        assert reward_certaindex([1.0, 1.0]) == 1.0
        assert reward_certaindex([0.0]) == 0.0

    @pytest.mark.parametrize("bad", [[], [1.2], [-0.1, 0.5], [float("nan")]])
    def test_reward_certaindex_invalid(self, bad):
        with pytest.raises(ValueError, match="candidate_rewards"):
            reward_certaindex(bad)

    @fast
    @given(st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=20))
    def test_reward_certaindex_in_unit_interval(self, rewards):
        value = reward_certaindex(rewards)
        assert 0.0 <= value <= 1.0
        assert min(rewards) - 1e-12 <= value <= max(rewards) + 1e-12
