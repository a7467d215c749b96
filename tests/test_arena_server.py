"""A real uvicorn server on 127.0.0.1: 20 annotators x 20 votes at once (SQLite and PostgreSQL), retries
idempotent, nothing lost or duplicated; and no acknowledged vote lost when the server is killed."""

import json
import signal
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("sqlalchemy")

from arena_helpers import PROMPTS, make_arena, postgres_server, request, server  # noqa: E402

N_ANNOTATORS = 20
N_VOTES = 20
PAIRS = [("model-a", "model-b"), ("model-c", "model-d"), ("model-a", "model-c"), ("model-b", "model-d")]


def _annotator_session(base, name, token, statuses, ids, lock):
    """Post N_VOTES votes; every third is sent again (a client retry), the first twice at the same time."""

    def post(v):
        a, b = PAIRS[v % len(PAIRS)]
        body = {"prompt": PROMPTS[v % 3], "candidates": [a, b], "ranks": [0, 1] if v % 2 else [1, 0],
                "request_id": f"{name}-{v}"}
        status, reply = request("POST", base + "/api/votes", token, body, timeout=30)
        with lock:
            statuses[status] += 1
            ids.setdefault((name, v), set()).add(reply["id"] if isinstance(reply, dict) and "id" in reply else None)
        return status

    with ThreadPoolExecutor(2) as twins:  # the same request racing itself
        list(twins.map(post, [0, 0]))
    for v in range(1, N_VOTES):
        post(v)
        if v % 3 == 0:
            post(v)


def _concurrency(url, tmp_path):
    names = [f"annotator-{i:02d}" for i in range(N_ANNOTATORS)]
    tokens = make_arena(url, tmp_path, annotators=names)
    statuses, ids, lock = Counter(), {}, threading.Lock()
    with server(url) as (base, _):
        with ThreadPoolExecutor(N_ANNOTATORS) as pool:
            futures = [pool.submit(_annotator_session, base, name, tokens[name], statuses, ids, lock)
                       for name in names]
            for future in futures:
                future.result(timeout=300)
        status, text = request("GET", base + "/api/export", tokens["admin"], timeout=60)
        health = request("GET", base + "/api/health")[1]
    assert status == 200
    records = [json.loads(line) for line in text.splitlines()]
    keys = [(r["annotator"], r["meta"]["request_id"]) for r in records]
    retries = 1 + sum(1 for v in range(1, N_VOTES) if v % 3 == 0)
    counts = {"votes_stored": len(records), "distinct": len(set(keys)), "status_201": statuses[201],
              "status_200_retries": statuses[200], "other_status": sum(n for s, n in statuses.items()
                                                                      if s not in (200, 201)),
              "health_votes": health["votes"]}
    print(f"RESULT {json.dumps({'case': 'arena-concurrency', 'database': url.split(':')[0], **counts})}")
    assert counts["other_status"] == 0, statuses
    assert counts["votes_stored"] == counts["distinct"] == N_ANNOTATORS * N_VOTES == counts["health_votes"]
    assert counts["status_201"] == N_ANNOTATORS * N_VOTES
    assert counts["status_200_retries"] == N_ANNOTATORS * retries
    assert set(keys) == {(name, f"{name}-{v}") for name in names for v in range(N_VOTES)}
    assert all(len(found) == 1 and None not in found for found in ids.values())  # every retry got the same id
    per = Counter(r["annotator"] for r in records)
    assert set(per.values()) == {N_VOTES}
    for record in records:  # the stored content is what was sent
        v = int(record["meta"]["request_id"].rsplit("-", 1)[1])
        assert record["candidates"] == list(PAIRS[v % len(PAIRS)]) and record["prompt"] == PROMPTS[v % 3]
        assert record["ranks"] == ([0, 1] if v % 2 else [1, 0])


@pytest.mark.slow
def test_concurrent_annotators_sqlite(tmp_path):
    _concurrency(f"sqlite:///{tmp_path / 'arena.db'}", tmp_path)


@pytest.mark.slow
def test_concurrent_annotators_postgresql(tmp_path):
    with postgres_server() as url:
        _concurrency(url, tmp_path)


def test_acknowledged_votes_survive_kill(tmp_path):
    """SIGKILL the server right after 30 acknowledged votes: all 30 are in the database."""
    from rankalign.arena import db

    url = f"sqlite:///{tmp_path / 'arena.db'}"
    tokens = make_arena(url, tmp_path)
    acknowledged = []
    with server(url) as (base, process):
        for v in range(30):
            body = {"prompt": None, "candidates": ["model-a", "model-b"], "ranks": [v % 2, 1 - v % 2],
                    "request_id": f"k{v}"}
            status, reply = request("POST", base + "/api/votes", tokens["alice"], body)
            assert status == 201
            acknowledged.append(reply["id"])
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    stored = db.vote_rows(db.connect(url))
    assert [row.id for row in stored] == acknowledged
    assert [row.request_id for row in stored] == [f"k{v}" for v in range(30)]
