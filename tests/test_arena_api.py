"""The arena's HTTP API in-process (Starlette TestClient, SQLite): auth, validation, idempotency, quotas,
rate limits, the leaderboard against `rankalign rate` and a hand-written fit, the export read back."""

import json

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("sqlalchemy")
pytest.importorskip("httpx")

from click.testing import CliRunner  # noqa: E402
from scipy.optimize import minimize  # noqa: E402
from scipy.special import log_expit  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from arena_helpers import ITEMS, PROMPTS, make_arena  # noqa: E402
from rankalign.arena import create_app  # noqa: E402
from rankalign.cli import main  # noqa: E402
from rankalign.data import read  # noqa: E402


@pytest.fixture
def arena(tmp_path):
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    tokens = make_arena(url, tmp_path, quotas={"bob": 3})
    client = TestClient(create_app(url, seed=0, per_minute=6000, burst=1000))
    return client, tokens, url


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def vote(client, token, candidates, ranks, request_id, prompt=0, **extra):
    body = {"prompt": PROMPTS[prompt] if prompt is not None else None, "candidates": candidates, "ranks": ranks,
            "request_id": request_id, **extra}
    return client.post("/api/votes", json=body, headers=auth(token))


def test_health_and_next(arena):
    client, tokens, _ = arena
    health = client.get("/api/health").json()
    assert health == {"status": "ok", "items": 4, "prompts": 3, "votes": 0, "sampler": "info"}
    task = client.get("/api/next", headers=auth(tokens["alice"])).json()
    assert task["prompt"]["text"] in PROMPTS and task["k"] == 2
    ids = [c["id"] for c in task["candidates"]]
    assert len(set(ids)) == 2 and set(ids) <= {i["id"] for i in ITEMS}
    for candidate in task["candidates"]:  # each shown response is that item's answer to that prompt
        item = next(i for i in ITEMS if i["id"] == candidate["id"])
        assert candidate["response"] == item["responses"][task["prompt"]["text"]]
    four = client.get("/api/next?k=4", headers=auth(tokens["alice"])).json()
    assert sorted(c["id"] for c in four["candidates"]) == sorted(i["id"] for i in ITEMS)
    assert client.get("/api/next?k=5", headers=auth(tokens["alice"])).status_code == 422
    assert client.get("/api/next?k=x", headers=auth(tokens["alice"])).status_code == 422


def test_bad_tokens_are_401(arena):
    client, _, _ = arena
    assert client.get("/api/next").status_code == 401
    assert client.get("/api/next", headers=auth("not-a-token")).status_code == 401
    response = client.post("/api/votes", json={"candidates": ["model-a", "model-b"], "ranks": [0, 1],
                                               "request_id": "r1", "prompt": None}, headers=auth("nope"))
    assert response.status_code == 401
    assert client.get("/api/health").json()["votes"] == 0


def test_vote_is_stored_once_per_request_id(arena):
    client, tokens, _ = arena
    first = vote(client, tokens["alice"], ["model-a", "model-b"], [0, 1], "req-1")
    assert first.status_code == 201 and first.json()["created"] is True
    again = vote(client, tokens["alice"], ["model-a", "model-b"], [0, 1], "req-1")
    assert again.status_code == 200 and again.json() == {**first.json(), "created": False}
    # the same request id from another annotator is a different vote
    assert vote(client, tokens["bob"], ["model-a", "model-b"], [0, 1], "req-1").status_code == 201
    # reusing a request id for different content is a conflict, not a silent overwrite
    conflict = vote(client, tokens["alice"], ["model-a", "model-b"], [1, 0], "req-1")
    assert conflict.status_code == 409
    assert client.get("/api/health").json()["votes"] == 2


@pytest.mark.parametrize("body, field", [
    ({"candidates": ["model-a", "model-x"], "ranks": [0, 1]}, "candidates[1]"),
    ({"candidates": ["model-a", "model-b"], "ranks": [0]}, "ranks"),
    ({"candidates": ["model-a", "model-b"], "ranks": [0, 2]}, "ranks[1]"),
    ({"candidates": ["model-a", "model-b"], "ranks": [0, "1"]}, "ranks[1]"),
    ({"candidates": ["model-a", "model-b"], "ranks": [0, None]}, "ranks[1]"),
    ({"candidates": ["model-a", "model-a"], "ranks": [0, 1]}, "candidates[1]"),
    ({"candidates": ["model-a"], "ranks": [0]}, "candidates"),
    ({"candidates": "model-a", "ranks": [0]}, "candidates"),
    ({"candidates": ["model-a", "model-b"], "ranks": [0, 1], "request_id": "bad id!"}, "request_id"),
    ({"candidates": ["model-a", "model-b"], "ranks": [0, 1], "prompt": "Unknown prompt"}, "prompt"),
    ({"candidates": ["model-a", "model-b"], "ranks": [0, 1], "prompt": 999}, "prompt"),
    ({"candidates": ["model-a", "model-b"], "ranks": [0, 1], "colour": "red"}, "colour"),
    ({"candidates": ["model-a", "model-b"], "ranks": [0, 1], "comment": 5}, "comment"),
])
def test_malformed_votes_are_422(arena, body, field):
    client, tokens, _ = arena
    payload = {"prompt": PROMPTS[0], "request_id": "r-1", **body}
    response = client.post("/api/votes", json=payload, headers=auth(tokens["alice"]))
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert client.get("/api/health").json()["votes"] == 0


def test_item_without_a_response_to_the_prompt_is_422(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    items = [dict(ITEMS[0]), dict(ITEMS[1]), {"id": "plain", "name": "No responses"}]
    tokens = make_arena(url, tmp_path, items=items)
    client = TestClient(create_app(url, seed=0))
    response = vote(client, tokens["alice"], ["model-a", "plain"], [0, 1], "r1")
    assert response.status_code == 422 and response.json()["field"] == "candidates[1]"


def test_malformed_json_and_wrong_content_type(arena):
    client, tokens, _ = arena
    bad = client.post("/api/votes", content=b"{not json", headers={**auth(tokens["alice"]),
                                                                   "Content-Type": "application/json"})
    assert bad.status_code == 422
    form = client.post("/api/votes", content=b"a=1", headers={**auth(tokens["alice"]),
                                                             "Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415
    big = client.post("/api/votes", content=b"{" + b" " * 70_000 + b"}",
                      headers={**auth(tokens["alice"]), "Content-Type": "application/json"})
    assert big.status_code == 413
    headers = {**auth(tokens["alice"]), "Content-Type": "application/json"}
    # nested deeper than json can parse (within the size limit): a 422, not a server error
    deep = client.post("/api/votes", content=b"[" * 30_000 + b"]" * 30_000, headers=headers)
    assert deep.status_code == 422 and "nested too deeply" in deep.text
    # a key named twice would let the last "ranks" win silently
    twice = client.post("/api/votes", headers=headers, content=json.dumps(
        {"prompt": PROMPTS[0], "candidates": ["model-a", "model-b"], "ranks": [0, 1]})[:-1].encode() + b', "ranks": [1, 0]}')
    assert twice.status_code == 422 and twice.json()["field"] == "ranks"
    assert client.get("/api/health").json()["votes"] == 0


def test_quota(arena):
    client, tokens, _ = arena
    for i in range(3):
        assert vote(client, tokens["bob"], ["model-a", "model-b"], [0, 1], f"b{i}").status_code == 201
    assert vote(client, tokens["bob"], ["model-a", "model-b"], [0, 1], "b3").status_code == 403
    assert vote(client, tokens["bob"], ["model-a", "model-b"], [0, 1], "b2").status_code == 200  # a retry is fine
    assert client.get("/api/next", headers=auth(tokens["bob"])).json()["done"] is True


def test_rate_limit_per_token(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    tokens = make_arena(url, tmp_path)
    client = TestClient(create_app(url, seed=0, per_minute=60, burst=3))
    codes = [client.get("/api/next", headers=auth(tokens["alice"])).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = client.get("/api/next", headers=auth(tokens["alice"]))
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    # another token has its own bucket
    assert client.get("/api/next", headers=auth(tokens["bob"])).status_code == 200


def _hand_fit(votes, items, alpha):
    """Bradley-Terry MAP by direct minimisation: ties half a win, every pair a ranking implies."""
    index = {item: i for i, item in enumerate(items)}
    rows = []
    for candidates, ranks in votes:
        for a in range(len(candidates)):
            for b in range(a + 1, len(candidates)):
                i, j = index[candidates[a]], index[candidates[b]]
                outcome = 1.0 if ranks[a] < ranks[b] else (0.0 if ranks[a] > ranks[b] else 0.5)
                rows.append((i, j, outcome))
    i, j, o = (np.array(column) for column in zip(*rows))

    def negative_log_posterior(theta):
        d = theta[i] - theta[j]
        return -(o * log_expit(d) + (1 - o) * log_expit(-d)).sum() + alpha * (theta ** 2).sum()

    theta = minimize(negative_log_posterior, np.zeros(len(items)), method="BFGS", options={"gtol": 1e-10}).x
    return dict(zip(items, theta - theta.mean()))


def test_leaderboard_is_rate_json_of_the_export(arena, tmp_path):
    client, tokens, url = arena
    votes = [(["model-a", "model-b"], [0, 1]), (["model-b", "model-c"], [0, 0]), (["model-c", "model-a"], [0, 1]),
             (["model-a", "model-b", "model-c", "model-d"], [0, 2, 1, 2]), (["model-d", "model-a"], [1, 0]),
             (["model-b", "model-d"], [0, 1])]
    for n, (candidates, ranks) in enumerate(votes):
        who = tokens["alice"] if n % 2 else tokens["bob"]
        assert vote(client, who, candidates, ranks, f"v{n}", prompt=n % 3).status_code == 201
    board = client.get("/api/leaderboard").json()
    out = tmp_path / "export.jsonl"
    runner = CliRunner()
    assert runner.invoke(main, ["arena", "export", "--db", url, "-o", str(out)]).exit_code == 0
    rated = runner.invoke(main, ["rate", str(out), "--json", "--prior", "0.01"])
    assert rated.exit_code == 0, rated.output
    expected = json.loads(rated.output)
    assert board == {**expected, "votes": 6}
    assert [row["rank"] for row in board["items"]] == [1, 2, 3, 4]
    assert set(board["items"][0]) >= {"item", "rating", "ci_low", "ci_high", "n", "rank"}
    hand = _hand_fit(votes, ["model-a", "model-b", "model-c", "model-d"], 0.01)
    for row in board["items"]:
        assert row["rating"] == pytest.approx(hand[row["item"]], abs=1e-5)
        assert row["ci_low"] < row["rating"] < row["ci_high"]
    # n: number of comparisons an item took part in (the 4-way vote gives each item 3)
    assert {r["item"]: r["n"] for r in board["items"]} == {"model-a": 6, "model-b": 6, "model-c": 5, "model-d": 5}
    elo = client.get("/api/leaderboard?scale=elo&model=davidson").json()
    assert elo["scale"] == "elo" and elo["model"] == "davidson"
    assert client.get("/api/leaderboard?model=nope").status_code == 422


def test_export_round_trip(arena):
    client, tokens, _ = arena
    assert vote(client, tokens["alice"], ["model-a", "model-b", "model-c", "model-d"], [0, 1, 1, 2], "k4",
                comment="A was <b>right</b>").status_code == 201
    assert vote(client, tokens["bob"], ["model-c", "model-d"], [0, 0], "tie", prompt=1).status_code == 201
    assert client.get("/api/export", headers=auth(tokens["alice"])).status_code == 403
    text = client.get("/api/export", headers=auth(tokens["admin"])).text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["annotator"] for line in lines] == ["alice", "bob"]
    assert lines[0]["candidates"] == ["model-a", "model-b", "model-c", "model-d"]
    assert lines[0]["ranks"] == [0, 1, 1, 2] and lines[0]["prompt"] == PROMPTS[0]
    assert lines[0]["meta"]["comment"] == "A was <b>right</b>"
    assert lines[1]["ranks"] == [0, 0]
    responses = [json.loads(x) for x in client.get("/api/export?form=responses",
                                                   headers=auth(tokens["admin"])).text.splitlines()]
    assert responses[1]["candidates"] == ["Green", "Purple"] and responses[1]["meta"]["items"] == ["model-c", "model-d"]
    assert client.get("/api/export?form=nope", headers=auth(tokens["admin"])).status_code == 422


def test_cli_export_is_read_by_the_data_layer(arena, tmp_path):
    client, tokens, url = arena
    vote(client, tokens["alice"], ["model-a", "model-b", "model-c"], [1, 0, 1], "x1")
    vote(client, tokens["bob"], ["model-d", "model-b"], [0, 1], "x2", prompt=None)
    out = tmp_path / "votes.jsonl"
    runner = CliRunner()
    assert runner.invoke(main, ["arena", "export", "--db", url, "-o", str(out)]).exit_code == 0
    result = read(out)
    assert result.layout == "rankedlist" and len(result) == 2
    assert [r.annotator for r in result] == ["alice", "bob"]
    assert result[0].ranks == (1, 0, 1) and result[1].prompt is None
    inspect = runner.invoke(main, ["data", "inspect", str(out)])
    assert inspect.exit_code == 0 and "2 distinct" in inspect.output
    # the item-level vote has no responses: the responses export leaves it out and says so
    texts = tmp_path / "responses.jsonl"
    exported = runner.invoke(main, ["arena", "export", "--db", url, "-o", str(texts), "--form", "responses"])
    assert exported.exit_code == 0 and "left out 1 votes: no prompt" in exported.output
    assert read(texts)[0].candidates == ("4", "Four.", "22")


def test_pages_escape_text_and_send_security_headers(arena):
    client, tokens, _ = arena
    vote(client, tokens["alice"], ["model-a", "model-b"], [0, 1], "c1", comment="<script>alert(1)</script>")
    vote(client, tokens["bob"], ["model-a", "model-b"], [0, 1], "c2")
    assert client.get("/vote", follow_redirects=False).status_code == 303  # not signed in
    login = client.post("/login", data={"token": tokens["admin"]}, follow_redirects=False)
    assert login.status_code == 303 and "httponly" in login.headers["set-cookie"].lower()
    assert "samesite=strict" in login.headers["set-cookie"].lower()
    page = client.get("/admin")
    assert page.status_code == 200
    assert "<script>alert(1)</script>" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "Model &lt;b&gt;B&lt;/b&gt;" in page.text and "<b>B</b>" not in page.text
    assert "100.0% of 1 pairs" in page.text  # alice and bob agree on the one shared question
    assert "script-src 'self'" in page.headers["content-security-policy"]
    board = client.get("/leaderboard")
    assert "Model &lt;b&gt;B&lt;/b&gt;" in board.text and "<b>B</b>" not in board.text
    bad = client.post("/login", data={"token": "wrong"})
    assert bad.status_code == 401 and "Unknown token" in bad.text
    client.cookies.clear()
    client.post("/login", data={"token": tokens["alice"]})
    assert client.get("/admin").status_code == 403


def test_cookie_votes_must_be_same_origin(arena):
    client, tokens, _ = arena
    client.post("/login", data={"token": tokens["alice"]})
    body = {"prompt": None, "candidates": ["model-a", "model-b"], "ranks": [0, 1], "request_id": "o1"}
    assert client.post("/api/votes", json=body, headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.post("/api/votes", json=body, headers={"Origin": "http://testserver"}).status_code == 201


def test_login_and_logout_must_be_same_origin(arena):
    client, tokens, _ = arena
    evil = {"Origin": "http://evil.example"}
    refused = client.post("/login", data={"token": tokens["alice"]}, headers=evil, follow_redirects=False)
    assert refused.status_code == 403 and "set-cookie" not in refused.headers
    assert client.get("/vote", follow_redirects=False).status_code == 303  # still signed out
    signed_in = client.post("/login", data={"token": tokens["alice"]}, headers={"Origin": "http://testserver"},
                            follow_redirects=False)
    assert signed_in.status_code == 303 and "set-cookie" in signed_in.headers
    out = client.post("/logout", headers=evil, follow_redirects=False)
    assert out.status_code == 403 and "set-cookie" not in out.headers
    assert client.get("/vote", follow_redirects=False).status_code == 200  # still signed in


def test_login_body_is_capped(arena):
    client, tokens, _ = arena
    upload = client.post("/login", data={"token": tokens["alice"]}, files={"f": ("big.bin", b"x" * 200_000)},
                         follow_redirects=False)
    assert upload.status_code == 413 and "set-cookie" not in upload.headers
    # a chunked body (no Content-Length) is cut off at the cap too
    chunked = client.post("/login", content=iter([b"token=", b"x" * 70_000]), follow_redirects=False,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert chunked.status_code == 413
    small = client.post("/login", files={"token": (None, tokens["alice"])}, follow_redirects=False)
    assert small.status_code == 303  # a multipart form within the cap still signs in


@pytest.mark.parametrize("rank", [None, "1", 1.5, True])
def test_rank_errors_say_what_a_vote_accepts(arena, rank):
    client, tokens, _ = arena
    response = vote(client, tokens["alice"], ["model-a", "model-b"], [0, rank], "r-1", prompt=None)
    assert response.status_code == 422 and response.json()["field"] == "ranks[1]"
    assert "a rank must be an integer (every candidate is ranked)" in response.json()["error"]
    assert "or null" not in response.json()["error"]  # null is refused, so the message does not offer it
