"""Held-out checks of the arena: scripted votes against what the export, the leaderboard and the sampler must
give, every expected value derived here from the votes and the formulas (never from rankalign's output).

Covers: export times in UTC with their offset on SQLite and PostgreSQL alike, the same export from both
backends, a replayed request_id with another rationale (409, not a silent 200), the sampler's belief when a
vote with a smaller id commits after a larger one, the info rule never pairing an item with itself, and the
Davidson and Plackett-Luce leaderboards against fits written from their likelihoods."""

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("sqlalchemy")
pytest.importorskip("httpx")

from scipy.optimize import minimize  # noqa: E402
from scipy.special import log_expit, logsumexp  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from arena_helpers import make_arena, postgres_server  # noqa: E402
from rankalign.arena import create_app, db, sampling  # noqa: E402
from rankalign.arena.app import Arena  # noqa: E402

PROMPTS = ["Explain gravity.", "Write a haiku.", "Unicode ✓ «quotes» \"and\" \\ backslash"]
ITEMS = [
    {"id": "m1", "name": "One", "responses": {PROMPTS[0]: "g1", PROMPTS[1]: "h1", PROMPTS[2]: "u1"}},
    {"id": "m2", "name": "Two", "responses": {PROMPTS[0]: "g2", PROMPTS[1]: "h2", PROMPTS[2]: "u2"}},
    {"id": "m3", "name": "Three", "responses": {PROMPTS[0]: "g3", PROMPTS[1]: "h3", PROMPTS[2]: "u3"}},
    {"id": "m4", "name": "Four", "responses": {PROMPTS[0]: "g4", PROMPTS[1]: "h4"}},
    {"id": "m5", "name": "Five", "responses": {PROMPTS[0]: "g5", PROMPTS[2]: "u5"}},
]
# (annotator, prompt index or None, candidates, ranks, request_id, comment)
VOTES = [
    ("alice", 0, ["m1", "m2"], [0, 1], "a1", None),
    ("alice", 0, ["m2", "m1"], [1, 0], "a2", "B loses"),
    ("bob", 1, ["m3", "m4"], [0, 0], "b1", None),
    ("bob", 0, ["m1", "m2", "m3", "m4"], [0, 1, 1, 2], "b2", "k4 with a tie"),
    ("carol", 2, ["m5", "m3", "m1"], [2, 0, 1], "c1", None),
    ("alice", None, ["m4", "m5"], [0, 1], "a3", "item-level"),
    ("bob", 0, ["m2", "m3", "m4", "m5", "m1"], [1, 1, 0, 2, 2], "b3", None),
    ("alice", 1, ["m4", "m1"], [0, 1], "a4", "  padded  "),
    ("bob", 0, ["m5", "m4"], [1, 1], "b4", None),
    ("carol", 1, ["m2", "m1", "m3"], [0, 0, 0], "c2", None),
]


def _auth(token):
    return {"Authorization": f"Bearer {token}"}


def _cast(client, tokens, votes=VOTES):
    for who, prompt, candidates, ranks, request_id, comment in votes:
        body = {"prompt": None if prompt is None else PROMPTS[prompt], "candidates": candidates, "ranks": ranks,
                "request_id": request_id}
        if comment is not None:
            body["comment"] = comment
        response = client.post("/api/votes", json=body, headers=_auth(tokens[who]))
        assert response.status_code == 201, response.text


def _export(client, tokens):
    text = client.get("/api/export", headers=_auth(tokens["admin"])).text
    return [json.loads(line) for line in text.splitlines()]


def _check_export(lines, start, end):
    """Every record is the vote as cast, in order, with its time in UTC (offset +00:00) within the window."""
    assert len(lines) == len(VOTES)
    for line, (who, prompt, candidates, ranks, request_id, comment) in zip(lines, VOTES):
        assert line["annotator"] == who and line["candidates"] == candidates and line["ranks"] == ranks
        assert line["prompt"] == (None if prompt is None else PROMPTS[prompt])
        assert line["meta"]["request_id"] == request_id
        assert line["meta"].get("comment") == (None if comment is None else comment.strip())
        created = line["meta"]["created_at"]
        assert created.endswith("+00:00"), created  # the same text on every backend, never a naive time
        moment = datetime.fromisoformat(created)
        assert moment.utcoffset() == timedelta(0)
        assert start - timedelta(seconds=2) <= moment <= end + timedelta(seconds=2)


def _without_times(lines):
    return [{**line, "meta": {k: v for k, v in line["meta"].items() if k != "created_at"}} for line in lines]


def test_export_is_the_votes_with_utc_times_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    tokens = make_arena(url, tmp_path, items=ITEMS, annotators=("alice", "bob", "carol"))
    client = TestClient(create_app(url, seed=0, per_minute=0))
    start = datetime.now(UTC)
    _cast(client, tokens)
    _check_export(_export(client, tokens), start, datetime.now(UTC))


def test_postgresql_export_equals_sqlite_export(tmp_path, monkeypatch):
    tokens = make_arena(f"sqlite:///{tmp_path / 'arena.db'}", tmp_path, items=ITEMS,
                        annotators=("alice", "bob", "carol"))
    client = TestClient(create_app(f"sqlite:///{tmp_path / 'arena.db'}", seed=0, per_minute=0))
    _cast(client, tokens)
    from_sqlite = _export(client, tokens)
    monkeypatch.setenv("PGTZ", "America/New_York")  # a session zone that is not UTC
    with postgres_server() as url:
        pg_tokens = make_arena(url, tmp_path, items=ITEMS, annotators=("alice", "bob", "carol"))
        pg_client = TestClient(create_app(url, seed=0, per_minute=0))
        start = datetime.now(UTC)
        _cast(pg_client, pg_tokens)
        from_postgresql = _export(pg_client, pg_tokens)
        pg_client.app.state.arena.engine.dispose()
    _check_export(from_postgresql, start, datetime.now(UTC))
    assert _without_times(from_postgresql) == _without_times(from_sqlite)


def test_replaying_a_request_id_with_another_rationale_is_a_conflict(tmp_path):
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    tokens = make_arena(url, tmp_path, items=ITEMS, annotators=("alice",))
    client = TestClient(create_app(url, seed=0, per_minute=0))
    body = {"prompt": PROMPTS[0], "candidates": ["m1", "m2"], "ranks": [0, 1], "request_id": "r1",
            "comment": "first thought"}
    assert client.post("/api/votes", json=body, headers=_auth(tokens["alice"])).status_code == 201
    # a retry is the same body: stored once
    assert client.post("/api/votes", json=body, headers=_auth(tokens["alice"])).status_code == 200
    changed = client.post("/api/votes", json={**body, "comment": "second thought"}, headers=_auth(tokens["alice"]))
    assert changed.status_code == 409 and changed.json()["field"] == "request_id"
    dropped = client.post("/api/votes", json={k: v for k, v in body.items() if k != "comment"},
                          headers=_auth(tokens["alice"]))
    assert dropped.status_code == 409
    [line] = _export(client, tokens)
    assert line["meta"]["comment"] == "first thought"


def _bt_map(pairs, n, prior_variance=1.0):
    """MAP of Bradley-Terry under theta ~ N(0, prior_variance): ties are half a win each."""
    first, second, outcome = (np.asarray(column) for column in zip(*pairs))

    def loss(theta):
        d = theta[first] - theta[second]
        return (-(outcome * log_expit(d) + (1 - outcome) * log_expit(-d)).sum()
                + (theta ** 2).sum() / (2 * prior_variance))

    return minimize(loss, np.zeros(n), method="BFGS", options={"gtol": 1e-10}).x


def test_belief_keeps_a_vote_committed_after_a_larger_id(tmp_path):
    """PostgreSQL hands out ids before COMMIT: vote 1 may commit after vote 2 was read. Stand-in on SQLite:
    store id 7, let the server read it, then store id 3."""
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    make_arena(url, tmp_path, items=[{"id": f"i{n}", "name": f"I{n}"} for n in range(4)], annotators=("alice",))
    arena = Arena(url, seed=0)
    with arena.engine.begin() as connection:
        alice = connection.execute(db.select(db.annotators.c.id).where(db.annotators.c.name == "alice")).scalar_one()

    def store(vote_id, candidates, ranks):
        with arena.engine.begin() as connection:
            connection.execute(db.votes.insert().values(id=vote_id, annotator_id=alice, request_id=f"r{vote_id}",
                                                        prompt_id=None, candidates=candidates, ranks=ranks,
                                                        created_at=db.now()))

    store(7, ["i2", "i3"], [0, 1])
    arena.current_belief()
    store(3, ["i0", "i1", "i2"], [0, 1, 1])
    mean, _ = arena.current_belief()
    # i2 > i3; i0 > i1, i0 > i2, i1 = i2
    hand = _bt_map([(2, 3, 1.0), (0, 1, 1.0), (0, 2, 1.0), (1, 2, 0.5)], 4)
    assert mean - mean.mean() == pytest.approx(hand - hand.mean(), abs=1e-5)
    assert mean[0] > 0  # the late vote is in the belief


@pytest.mark.parametrize("mean, cov", [
    (np.array([0.0, 40.0, 80.0]), np.eye(3)),  # every pair decided: p (1 - p) is 0 in floating point
    (np.zeros(3), np.zeros((3, 3))),  # nothing left to learn
])
@pytest.mark.parametrize("k", [2, 3])
def test_info_never_pairs_an_item_with_itself(mean, cov, k):
    for seed in range(100):
        chosen = sampling.choose("info", mean, cov, k, np.random.default_rng(seed))
        assert len(chosen) == k and len(set(chosen)) == k, chosen


def _pairs_of(votes, index):
    rows = []
    for candidates, ranks in votes:
        for a in range(len(candidates)):
            for b in range(a + 1, len(candidates)):
                outcome = 1.0 if ranks[a] < ranks[b] else 0.0 if ranks[a] > ranks[b] else 0.5
                rows.append((index[candidates[a]], index[candidates[b]], outcome))
    return np.array(rows)


def test_davidson_and_plackett_luce_leaderboards_against_hand_fits(tmp_path):
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    tokens = make_arena(url, tmp_path, items=ITEMS, annotators=("alice", "bob", "carol"))
    client = TestClient(create_app(url, seed=0, per_minute=0))
    _cast(client, tokens)
    items = sorted(item["id"] for item in ITEMS)
    index = {item: i for i, item in enumerate(items)}
    votes = [(candidates, ranks) for _, _, candidates, ranks, _, _ in VOTES]
    rows = _pairs_of(votes, index)
    first, second, outcome = rows[:, 0].astype(int), rows[:, 1].astype(int), rows[:, 2]

    def davidson(x):  # P(i > j) ∝ pi_i, P(tie) ∝ nu sqrt(pi_i pi_j); prior 0.01 sum theta^2
        theta, log_nu = x[:-1], x[-1]
        a, b, c = theta[first], theta[second], log_nu + (theta[first] + theta[second]) / 2
        chosen = np.where(outcome == 1.0, a, np.where(outcome == 0.0, b, c))
        return -(chosen - logsumexp(np.stack([a, b, c]), axis=0)).sum() + 0.01 * (theta ** 2).sum()

    x = minimize(davidson, np.zeros(len(items) + 1), method="BFGS", options={"gtol": 1e-10}).x
    hand = x[:-1] - x[:-1].mean()
    board = client.get("/api/leaderboard?model=davidson").json()
    assert board["votes"] == len(VOTES) and board["nu"] == pytest.approx(np.exp(x[-1]), rel=1e-4)
    for row in board["items"]:
        assert row["rating"] == pytest.approx(hand[index[row["item"]]], abs=1e-4)
        assert row["n"] == sum(len(c) - 1 for c, _ in votes if row["item"] in c)

    # plain Plackett-Luce takes a tie only as the unordered bottom group: the 4-way vote (line 4) ties mid-list
    refused = client.get("/api/leaderboard?model=pl").json()
    assert refused["items"] == [] and refused["error"].startswith("line 4: ")
    assert "votes.jsonl" not in refused["error"] and "/tmp" not in refused["error"]


def test_plackett_luce_leaderboard_against_a_hand_fit(tmp_path):
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    ids = [f"i{n}" for n in range(5)]
    tokens = make_arena(url, tmp_path, items=[{"id": i, "name": i.upper()} for i in ids], annotators=("alice",))
    client = TestClient(create_app(url, seed=0, per_minute=0))
    votes = [(["i0", "i1"], [0, 1]), (["i1", "i2", "i3"], [0, 1, 2]), (["i4", "i0", "i2", "i1"], [0, 1, 2, 2]),
             (["i3", "i4"], [1, 0]), (["i2", "i0", "i3"], [1, 0, 2]), (["i1", "i3"], [1, 0]),
             (["i0", "i1", "i2", "i3", "i4"], [3, 0, 2, 1, 3]), (["i4", "i2"], [1, 0]), (["i2", "i3"], [0, 1])]
    for n, (candidates, ranks) in enumerate(votes):
        body = {"prompt": None, "candidates": candidates, "ranks": ranks, "request_id": f"v{n}"}
        assert client.post("/api/votes", json=body, headers=_auth(tokens["alice"])).status_code == 201
    index = {item: i for i, item in enumerate(ids)}

    def negative_log_posterior(theta):  # stage by stage; a tied bottom group is left unordered
        total = 0.0
        for candidates, ranks in votes:
            remaining = [index[c] for c in candidates]
            for level in sorted(set(ranks))[:-1]:
                [winner] = [index[c] for c, r in zip(candidates, ranks) if r == level]
                total += theta[winner] - logsumexp(theta[remaining])
                remaining.remove(winner)
        return -total + 0.01 * (theta ** 2).sum()

    theta = minimize(negative_log_posterior, np.zeros(5), method="BFGS", options={"gtol": 1e-10}).x
    theta -= theta.mean()
    board = client.get("/api/leaderboard?model=pl").json()
    assert board["model"] == "plackett-luce" and board["votes"] == len(votes)
    assert [row["item"] for row in board["items"]] == sorted(ids, key=lambda i: -theta[index[i]])
    for row in board["items"]:
        assert row["rating"] == pytest.approx(theta[index[row["item"]]], abs=1e-4)
