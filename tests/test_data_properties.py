"""Property tests (hypothesis) for RankedList.to_pairs and RankedList.from_scores, against brute force."""

import math
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from rankalign.data import RankedList

settings.register_profile("data", max_examples=60, deadline=None)
settings.load_profile("data")


@st.composite
def ranked_lists(draw, allow_none=True):
    k = draw(st.integers(1, 7))
    rank = st.integers(0, k - 1)
    ranks = draw(st.lists(st.one_of(rank, st.none()) if allow_none else rank, min_size=k, max_size=k))
    weight = draw(st.floats(0, 10, allow_nan=False))
    return RankedList(prompt="p", candidates=[f"c{i}" for i in range(k)], ranks=ranks, weight=weight,
                      annotator="ann")


def brute_force_pairs(ranks, strategy):
    """Expected pairs as a Counter of (winner, loser, tie) -- ties as (min, max, True) -- by enumerating every
    two ranked candidates and classifying them by their rank groups."""
    distinct = sorted({r for r in ranks if r is not None})
    level = {r: i for i, r in enumerate(distinct)}
    expected = Counter()
    for i in range(len(ranks)):
        for j in range(i + 1, len(ranks)):
            ri, rj = ranks[i], ranks[j]
            if ri is None or rj is None:
                continue
            li, lj = level[ri], level[rj]
            if li == lj:
                keep = strategy != "best_vs_rest" or li == 0
                if keep:
                    expected[(f"c{i}", f"c{j}", True)] += 1
                continue
            winner, loser = (i, j) if li < lj else (j, i)
            if strategy == "all" or (strategy == "adjacent" and abs(li - lj) == 1) or (
                    strategy == "best_vs_rest" and min(li, lj) == 0):
                expected[(f"c{winner}", f"c{loser}", False)] += 1
    return expected


def as_counter(pairs):
    out = Counter()
    for p in pairs:
        a, b = p.candidates
        if p.ranks == (0, 0):
            a, b = sorted((a, b), key=lambda name: int(name[1:]))
            out[(a, b, True)] += 1
        else:
            assert p.ranks == (0, 1)
            out[(a, b, False)] += 1
    return out


@given(ranked_lists(), st.sampled_from(["all", "adjacent", "best_vs_rest"]))
def test_to_pairs_matches_brute_force_and_inherits_fields(record, strategy):
    pairs = record.to_pairs(strategy)
    assert as_counter(pairs) == brute_force_pairs(list(record.ranks), strategy)
    for p in pairs:
        assert (p.prompt, p.weight, p.annotator) == (record.prompt, record.weight, record.annotator)
    strict = record.to_pairs(strategy, ties=False)
    assert len(strict) == sum(1 for p in pairs if p.ranks == (0, 1))


@given(st.integers(1, 9))
def test_all_pairs_of_a_strict_ranking_of_k_is_k_choose_2(k):
    record = RankedList(candidates=[f"c{i}" for i in range(k)], ranks=list(range(k))[::-1])
    assert len(record.to_pairs("all")) == k * (k - 1) // 2
    assert len(record.to_pairs("adjacent")) == k - 1
    assert len(record.to_pairs("best_vs_rest")) == k - 1


@given(st.lists(st.integers(1, 4), min_size=1, max_size=4))
def test_tie_group_sizes_give_the_pair_counts(group_sizes):
    # groups of sizes g_1..g_m: "all" gives sum_{a<b} g_a g_b strict pairs and sum C(g, 2) tie pairs
    ranks = [level for level, size in enumerate(group_sizes) for _ in range(size)]
    record = RankedList(candidates=[f"c{i}" for i in range(len(ranks))], ranks=ranks)
    pairs = record.to_pairs("all")
    ties = sum(1 for p in pairs if p.ranks == (0, 0))
    assert ties == sum(g * (g - 1) // 2 for g in group_sizes)
    strict = len(pairs) - ties
    assert strict == sum(group_sizes[a] * group_sizes[b] for a in range(len(group_sizes))
                         for b in range(a + 1, len(group_sizes)))


finite = st.floats(-100, 100, allow_nan=False, allow_infinity=False)


@given(st.lists(finite, min_size=1, max_size=8), st.sampled_from([0.0, 0.5, 3.0]), st.booleans())
def test_from_scores_monotone_ties_within_tolerance_order_kept(scores, tolerance, higher_is_better):
    candidates = [f"c{i}" for i in range(len(scores))]
    record = RankedList.from_scores(scores, candidates=candidates, tie_tolerance=tolerance,
                                    higher_is_better=higher_is_better)
    assert record.candidates == tuple(candidates)  # candidate order preserved
    assert record.scores == tuple(scores)  # scores kept
    sign = 1 if higher_is_better else -1
    ranks = record.ranks
    assert sorted(set(ranks)) == list(range(len(set(ranks))))  # dense ranks
    for i in range(len(scores)):
        for j in range(len(scores)):
            if sign * scores[i] > sign * scores[j]:
                assert ranks[i] <= ranks[j]  # better score never ranked worse
            if ranks[i] == ranks[j]:
                assert abs(scores[i] - scores[j]) <= tolerance  # ties only within the tolerance
            if tolerance == 0.0:
                assert (ranks[i] == ranks[j]) == (scores[i] == scores[j])


@given(st.lists(finite, min_size=2, max_size=8))
def test_from_scores_tolerance_does_not_chain(scores):
    # a group is anchored at its best score, so every member lies within the tolerance of the best member
    record = RankedList.from_scores(scores, candidates=[f"c{i}" for i in range(len(scores))], tie_tolerance=1.0)
    for group in record.levels():
        best = max(scores[i] for i in group)
        assert all(best - scores[i] <= 1.0 for i in group)
    assert not any(math.isnan(s) for s in record.scores)


@given(st.text(alphabet="ab\n", max_size=30), st.text(alphabet="ab\n", max_size=30))
def test_common_prefix_length_against_a_character_loop(a, b):
    from rankalign.data.layouts import _common_prefix_length

    expected = 0
    while expected < min(len(a), len(b)) and a[expected] == b[expected]:
        expected += 1
    assert _common_prefix_length(a, b) == expected
