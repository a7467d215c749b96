"""Annotator models: mixture over annotators, flip-rate reliability, agreement statistics, and their CLI."""

import itertools
import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.special import expit

from rankalign.cli import main
from rankalign.data import DataError, RankedList, write
from rankalign.stats import annotators as A


# ------------------------------------------------------------------------------------------ agreement
def _triples(rows):
    unit, rater, value = [], [], []
    for r, row in enumerate(rows):
        for u, v in enumerate(row):
            if v is not None:
                unit.append(u), rater.append(r), value.append(v)
    return unit, rater, value


def test_krippendorff_alpha_matches_krippendorffs_worked_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", example C: 4 observers, 12 units,
    # missing values; the paper gives alpha = 0.743 (nominal), 0.815 (ordinal), 0.849 (interval)
    rows = [[1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
            [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
            [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
            [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]]
    triples = _triples(rows)
    assert A.krippendorff_alpha(*triples, metric="nominal") == pytest.approx(0.743, abs=5e-4)
    assert A.krippendorff_alpha(*triples, metric="ordinal") == pytest.approx(0.815, abs=5e-4)
    assert A.krippendorff_alpha(*triples, metric="interval") == pytest.approx(0.849, abs=5e-4)


def test_fleiss_kappa_matches_the_textbook_example():
    # Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories, kappa = 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    unit, rater, value = [], [], []
    for i, row in enumerate(table):
        raters = itertools.count()
        for category, n in enumerate(row):
            for _ in range(n):
                unit.append(i), rater.append(next(raters)), value.append(category)
    assert A.fleiss_kappa(unit, rater, value) == pytest.approx(0.210, abs=5e-4)


def test_cohen_kappa_by_hand():
    # 50 units: both yes 20, a yes b no 5, a no b yes 10, both no 15:
    # p_o = 0.7, p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5, kappa = 0.4
    a = [1] * 20 + [1] * 5 + [0] * 10 + [0] * 15
    b = [1] * 20 + [0] * 5 + [1] * 10 + [0] * 15
    assert A.cohen_kappa(a, b) == pytest.approx(0.4)
    kappa, pairs = A.mean_cohen_kappa(list(range(50)) * 2, [0] * 50 + [1] * 50, a + b)
    assert pairs == 1 and kappa == pytest.approx(0.4)


def test_rand_index_against_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(5):
        a, b = rng.integers(0, 3, 25), rng.integers(0, 4, 25)
        alike = [(a[i] == a[j]) == (b[i] == b[j]) for i in range(25) for j in range(i + 1, 25)]
        assert A.rand_index(a, b) == pytest.approx(np.mean(alike))
    assert A.rand_index([0, 0, 1, 1], [5, 5, 2, 2]) == 1.0


# ------------------------------------------------------------------------------------------ simulation
def _pairs(strengths_of, flips, judgments, seed, n_items):
    rng = np.random.default_rng(seed)
    records = []
    for u, (strengths, flip) in enumerate(zip(strengths_of, flips)):
        for _ in range(judgments):
            i, j = rng.choice(n_items, size=2, replace=False)
            win = rng.random() < expit(strengths[i] - strengths[j])
            win = win if rng.random() >= flip else not win
            records.append(RankedList(candidates=[f"i{i}", f"i{j}"], ranks=[0, 1] if win else [1, 0],
                                      annotator=f"a{u:03d}"))
    return records


def _opposite(n_annotators=40, judgments=40, n_items=8, seed=0):
    base = np.linspace(-1.5, 1.5, n_items)
    truth = np.arange(n_annotators) % 2
    return _pairs([base if g == 0 else -base for g in truth], np.zeros(n_annotators), judgments, seed, n_items), truth


def test_mixture_recovers_two_opposite_groups_and_bic_picks_two():
    records, truth = _opposite()
    data = A.annotated_rankings(records)
    mixture = A.choose_groups(data, max_groups=3, restarts=2)
    assert len(mixture.groups) == 2
    assert A.rand_index(mixture.assignment, truth[[int(a[1:]) for a in data.annotators]]) >= 0.95
    # the groups' ratings are (nearly) negatives of each other; the pooled fit is flat
    r0 = dict(zip(mixture.groups[0].items, mixture.groups[0].ratings))
    r1 = dict(zip(mixture.groups[1].items, mixture.groups[1].ratings))
    assert np.corrcoef([r0[i] for i in data.items], [r1[i] for i in data.items])[0, 1] < -0.9
    pooled = A.fit_annotator_mixture(data, 1).groups[0]
    assert np.abs(pooled.ratings).max() < 0.5 < np.abs(mixture.groups[0].ratings).max()


def test_bic_keeps_one_group_when_everyone_agrees():
    base = np.linspace(-1.5, 1.5, 8)
    data = A.annotated_rankings(_pairs([base] * 30, np.zeros(30), 30, 1, 8))
    assert len(A.choose_groups(data, max_groups=3, restarts=2).groups) == 1


def test_sufficient_statistics_equal_the_per_judgment_sum():
    records, _ = _opposite(n_annotators=6, judgments=10)
    records.append(RankedList(candidates=["i0", "i1", "i2"], ranks=[0, 0, 1], annotator="a000", weight=2.0))
    data = A.annotated_rankings(records)
    backend = A._PairBackend(data)
    theta = np.random.default_rng(0).standard_normal((3, len(data.items)))
    fast = backend.annotator_log_likelihoods(theta, data)
    slow = np.zeros_like(fast)
    for g in range(3):
        for ranking, owner, weight in zip(data.rankings, data.annotator, data.weight):
            levels = [level if isinstance(level, list) else [level] for level in ranking]
            for a, level in enumerate(levels):
                for x, y in itertools.combinations(level, 2):  # tie: half a win each way
                    d = theta[g, x] - theta[g, y]
                    slow[owner, g] += weight * 0.5 * (np.log(expit(d)) + np.log(expit(-d)))
                for lower in levels[a + 1:]:
                    for i in level:
                        for j in lower:
                            slow[owner, g] += weight * np.log(expit(theta[g, i] - theta[g, j]))
    np.testing.assert_allclose(fast, slow, rtol=1e-12)


def test_plackett_luce_mixture_on_rankings():
    rng = np.random.default_rng(2)
    base = np.linspace(-2, 2, 6)
    records, truth = [], []
    for u in range(20):
        strengths = base if u % 2 == 0 else -base
        truth.append(u % 2)
        for _ in range(15):
            items = rng.choice(6, size=4, replace=False)
            order = items[np.argsort(-(strengths[items] + rng.gumbel(size=4)))]
            records.append(RankedList(candidates=[f"i{i}" for i in order], ranks=[0, 1, 2, 3], annotator=f"a{u:03d}"))
    data = A.annotated_rankings(records)
    mixture = A.fit_annotator_mixture(data, 2, model="plackett-luce", restarts=2)
    assert A.rand_index(mixture.assignment, [truth[int(a[1:])] for a in data.annotators]) >= 0.95
    assert mixture.groups[0].model == "plackett-luce"


def test_flip_rates_are_recovered_and_weighting_helps():
    flips = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    strengths = np.linspace(-3, 3, 10)
    records = _pairs([strengths] * 5, flips, 1500, 4, 10)
    data = A.annotated_rankings(records)
    fit = A.fit_annotator_reliability(data)
    order = [int(a[1:]) for a in fit.annotators]
    np.testing.assert_allclose(fit.flip_rate, flips[order], atol=0.05)
    interior = flips[order] > 0  # the flip-free annotator's estimate sits at the boundary 0: no Wald SE
    assert np.all(fit.flip_rate_se[interior] > 0) and np.all(fit.flip_rate_se[interior] < 0.05)
    assert np.all(np.isnan(fit.flip_rate_se[~interior]))
    weighted = A.weight_by_reliability(records, fit)
    expected = {a: (1 - 2 * e) ** 2 for a, e in zip(fit.annotators, fit.flip_rate)}
    assert [r.weight for r in weighted] == pytest.approx([expected[r.annotator] for r in records])
    # the joint flip-model ratings undo the attenuation that flips cause in plain BT
    plain = A.fit_annotator_mixture(data, 1).groups[0]
    truth = np.array([strengths[int(i[1:])] for i in fit.ratings.items])
    truth -= truth.mean()
    ours = np.array([dict(zip(plain.items, plain.ratings))[i] for i in fit.ratings.items])
    assert np.abs(fit.ratings.ratings - truth).mean() < 0.5 * np.abs(ours - truth).mean()


def test_flip_model_on_rankings_is_reversal():
    # one annotator always reverses: under the PL flip model their rankings agree with the others' reversed
    rng = np.random.default_rng(5)
    strengths = np.linspace(-2, 2, 5)
    records = []
    for u in range(4):
        for _ in range(200):
            items = rng.choice(5, size=3, replace=False)
            order = list(items[np.argsort(-(strengths[items] + rng.gumbel(size=3)))])
            if u == 3:
                order = order[::-1]
            records.append(RankedList(candidates=[f"i{i}" for i in order], ranks=[0, 1, 2], annotator=f"a{u}"))
    fit = A.fit_annotator_reliability(A.annotated_rankings(records), model="plackett-luce")
    rates = dict(zip(fit.annotators, fit.flip_rate))
    assert rates["a3"] > 0.45 and max(rates["a0"], rates["a1"], rates["a2"]) < 0.05


def test_missing_annotator_is_an_error_naming_the_line():
    records = [RankedList(candidates=["a", "b"], ranks=[0, 1], annotator="x"),
               RankedList(candidates=["a", "b"], ranks=[1, 0])]
    with pytest.raises(DataError) as error:
        A.annotated_rankings(records, path="f.jsonl")
    assert "f.jsonl:2" in str(error.value) and "annotator" in str(error.value)


# ------------------------------------------------------------------------------------------------ CLI
def test_rate_by_annotator_json(tmp_path):
    records, truth = _opposite(n_annotators=20, judgments=40)
    path = tmp_path / "groups.jsonl"
    write(records, path)
    result = CliRunner().invoke(main, ["rate", str(path), "--by-annotator", "--groups", "auto", "--json",
                                       "--restarts", "2"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["n_groups"] == 2 and len(out["groups"]) == 2 and out["selection"]["criterion"] == "bic"
    assert {"item", "rating", "ci_low", "ci_high", "n"} <= set(out["groups"][0]["items"][0])
    assert len(out["annotators"]) == 20
    assert {"annotator", "group", "responsibility"} == set(out["annotators"][0])
    groups = [r["group"] for r in sorted(out["annotators"], key=lambda r: r["annotator"])]
    assert A.rand_index(groups, truth) >= 0.95
    table = CliRunner().invoke(main, ["rate", str(path), "--by-annotator", "--groups", "2", "--restarts", "1"])
    assert table.exit_code == 0 and "group 1" in table.output


def test_rate_weight_by_reliability_and_annotators_report(tmp_path):
    strengths = np.linspace(-2, 2, 6)
    records = _pairs([strengths] * 4, [0.0, 0.0, 0.0, 0.45], 200, 7, 6)
    path = tmp_path / "flips.jsonl"
    write(records, path)
    plain = json.loads(CliRunner().invoke(main, ["rate", str(path), "--json"]).output)
    weighted = CliRunner().invoke(main, ["rate", str(path), "--json", "--weight-by-reliability"])
    assert weighted.exit_code == 0, weighted.output
    weighted = json.loads(weighted.output)
    # the flipping annotator is down-weighted, so the ratings spread out towards the truth
    spread = lambda out: max(i["rating"] for i in out["items"]) - min(i["rating"] for i in out["items"])  # noqa: E731
    assert spread(weighted) > spread(plain)
    png = tmp_path / "report.png"
    report = CliRunner().invoke(main, ["annotators", str(path), "--json", "--plot", str(png)])
    assert report.exit_code == 0, report.output
    out = json.loads(report.output)
    rates = {r["annotator"]: r["flip_rate"] for r in out["annotators"]}
    assert rates["a003"] > 0.35 and max(rates["a000"], rates["a001"], rates["a002"]) < 0.1
    assert set(out["agreement"]) >= {"fleiss_kappa", "mean_cohen_kappa", "krippendorff_alpha_ordinal"}
    assert png.read_bytes()[:4] == b"\x89PNG"
    table = CliRunner().invoke(main, ["annotators", str(path), "--top", "2"])
    assert table.exit_code == 0 and "a003" in table.output and "Fleiss" in table.output


def test_annotators_command_reports_a_missing_annotator(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"candidates": ["a", "b"], "ranks": [0, 1], "annotator": "x"}\n'
                    '{"candidates": ["a", "b"], "ranks": [1, 0]}\n')
    result = CliRunner().invoke(main, ["annotators", str(path)])
    assert result.exit_code != 0 and "bad.jsonl:2" in result.output and "annotator" in result.output


def test_train_config_weights_records_by_reliability(tmp_path):
    from rankalign.train.config import TrainConfig
    from rankalign.train.run import read_records

    # prompt/response records: each (prompt, response) is an item; annotator c flips every judgment
    rng = np.random.default_rng(11)
    records = []
    for _ in range(300):
        p = int(rng.integers(3))
        i, j = rng.choice(5, size=2, replace=False)
        for annotator in ("a", "b", "c"):
            better_first = (i < j) if annotator != "c" else (i > j)
            records.append(RankedList(prompt=f"prompt {p}", candidates=[f"answer {i}", f"answer {j}"],
                                      ranks=[0, 1] if better_first else [1, 0], annotator=annotator))
    path = tmp_path / "text.jsonl"
    write(records, path)
    plain = read_records(TrainConfig(data=str(path)))
    weighted = read_records(TrainConfig(data=str(path), weight_by_reliability=True))
    assert {r.weight for r in plain} == {1.0}
    by_annotator = {r.annotator: r.weight for r in weighted}
    assert by_annotator["c"] < 0.05 and by_annotator["a"] > 0.9 and by_annotator["b"] > 0.9


def test_flip_rate_on_the_boundary_has_no_standard_error():
    """An annotator whose one judgment the ratings agree with gets the maximum-likelihood flip rate 0, a
    boundary estimate: a Wald SE there (before: about 1.0) means nothing, so it is nan; an interior
    estimate keeps its SE."""
    rng = np.random.default_rng(0)
    strengths = np.linspace(-2, 2, 5)
    records = []
    for u, flip in enumerate([0.1, 0.2, 0.3]):
        for _ in range(400):
            a, b = rng.choice(5, size=2, replace=False)
            first_wins = rng.random() < expit(strengths[a] - strengths[b])
            if rng.random() < flip:
                first_wins = not first_wins
            winner, loser = (a, b) if first_wins else (b, a)
            records.append(RankedList(candidates=[f"i{winner}", f"i{loser}"], ranks=[0, 1], annotator=f"a{u}"))
    records.append(RankedList(candidates=["i4", "i0"], ranks=[0, 1], annotator="solo"))  # the strongest wins
    fit = A.fit_annotator_reliability(A.annotated_rankings(records))
    by_name = dict(zip(fit.annotators, zip(fit.flip_rate, fit.flip_rate_se)))
    assert by_name["solo"][0] < 1e-6 and np.isnan(by_name["solo"][1])
    for name in ("a0", "a1", "a2"):
        assert 0 < by_name[name][0] < 0.5 and 0 < by_name[name][1] < 0.1
