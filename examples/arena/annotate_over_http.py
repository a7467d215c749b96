"""Simulated annotators voting through a running arena's HTTP API, exactly as a person's browser does.

    python examples/arena/annotate_over_http.py --base http://127.0.0.1:8765 --tokens tokens.txt --votes 40 \
        --wait 60 --leaderboard leaderboard.json

Each token in the file (one per line) is one annotator. Every round an annotator asks ``GET /api/next``,
answers with a :mod:`rankalign.sim` annotator (Plackett-Luce choice on a hidden quality per item, given
below) and posts the ranking with ``POST /api/votes``. ``--wait`` waits for a server that is starting;
``--leaderboard`` saves ``GET /api/leaderboard`` at the end. Loops are bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
import uuid

import numpy as np

from rankalign.sim.annotators import Annotator, annotate

# the hidden quality of each item of examples/arena/items.jsonl (the "gold" the votes should recover)
QUALITY = {"helpful": 1.5, "terse": 0.8, "casual": 0.0, "wrong": -1.5}


def call(method, url, token, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def wait_for(base, seconds):
    """Poll /api/health until the server answers (at most ``seconds``)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"no arena server at {base} after {seconds} s") from None
        time.sleep(0.5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="http://127.0.0.1:8765")
    parser.add_argument("--tokens", required=True, help="file with one annotator token per line")
    parser.add_argument("--votes", type=int, default=40, help="votes per annotator")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the server to start")
    parser.add_argument("--leaderboard", default=None, help="save the leaderboard JSON here at the end")
    args = parser.parse_args()
    if args.wait:
        wait_for(args.base, args.wait)
    tokens = [line.strip() for line in open(args.tokens) if line.strip()]
    rng = np.random.default_rng(args.seed)
    people = [Annotator(id=f"sim-{i}", weights=(1.0,), temperature=0.7) for i in range(len(tokens))]
    stored = 0
    deadline = time.monotonic() + args.max_seconds
    for _ in range(args.votes):
        for token, person in zip(tokens, people):
            if time.monotonic() > deadline:
                raise SystemExit(f"stopped after {args.max_seconds} s with {stored} votes")
            _, task = call("GET", f"{args.base}/api/next?k={args.k}", token)
            if task.get("done"):
                continue
            ids = [c["id"] for c in task["candidates"]]
            record = annotate(person, None, ids, np.array([[QUALITY[i]] for i in ids]), rng)
            status, _ = call("POST", f"{args.base}/api/votes", token, {
                "prompt": task["prompt"]["id"] if task["prompt"] else None, "candidates": ids,
                "ranks": list(record.ranks), "request_id": uuid.uuid4().hex})
            stored += status == 201
    print(f"{stored} votes stored")
    if args.leaderboard:
        with urllib.request.urlopen(f"{args.base}/api/leaderboard", timeout=60) as response:
            board = json.loads(response.read())
        with open(args.leaderboard, "w") as handle:
            json.dump(board, handle, indent=1)
        print("leaderboard:", ", ".join(f"{row['rank']}. {row['item']} {row['rating']:+.2f}" for row in board["items"]))


if __name__ == "__main__":
    main()
