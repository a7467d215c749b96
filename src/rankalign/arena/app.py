"""The arena web app (Starlette): a JSON API for annotators and scripts, and three server-rendered pages.

API (``Authorization: Bearer TOKEN``; the pages send the same token from an HttpOnly cookie)
    ``GET  /api/health``        liveness and counts (no token).
    ``GET  /api/next[?k=K]``    the next task for this annotator, chosen by the arena's sampler.
    ``POST /api/votes``         ``{prompt, candidates, ranks, request_id, comment?}``: 201 stored; 200 the
                                same ``request_id`` again (stored once); 401 bad token; 403 quota used up;
                                409 ``request_id`` reused for a different vote; 422 invalid vote; 429 rate.
    ``GET  /api/leaderboard``   the JSON of ``rankalign rate --json`` on the export (no token).
    ``GET  /api/export``        JSONL records (admin token), ``?form=items|responses``.
Pages: ``/`` (sign in with a token), ``/vote``, ``/leaderboard``, ``/admin`` (admin token).

Every text reaches HTML through Jinja2 with autoescaping; the pages run no inline script (a strict
Content-Security-Policy forbids it) and read their data from JSON endpoints.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from rankalign.data import loads_json
from rankalign.data.errors import DataError
from rankalign.data.readers import write
from rankalign.data.records import RankedList

from . import db
from .records import agreement, vote_records
from .sampling import SAMPLERS, bt_posterior, choose, vote_comparisons

HERE = Path(__file__).parent
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,100}$")
MAX_BODY = 64 * 1024
MAX_K = 8
MAX_COMMENT = 2000
COOKIE = "arena_token"
VOTE_FIELDS = {"prompt", "candidates", "ranks", "request_id", "comment"}
RATE_MODELS = ("bt", "thurstone", "davidson", "rao-kupper", "pl")


class VoteError(ValueError):
    """An invalid vote: ``field`` names the offending JSON field (422)."""

    def __init__(self, message, field=None):
        super().__init__(message)
        self.field = field


# ------------------------------------------------------------------------------------------- limits
class RateLimiter:
    """Token buckets per key: ``burst`` requests at once, refilled at ``per_minute`` / 60 per second."""

    def __init__(self, per_minute: float, burst: int):
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def allow(self, key: str) -> float:
        """0.0 when the request may pass, else the seconds to wait before the next one would."""
        if self.rate <= 0:
            return 0.0
        with self.lock:
            clock = time.monotonic()
            tokens, last = self.buckets.get(key, (self.burst, clock))
            tokens = min(self.burst, tokens + (clock - last) * self.rate)
            if tokens >= 1.0:
                self.buckets[key] = (tokens - 1.0, clock)
                return 0.0
            self.buckets[key] = (tokens, clock)
            return (1.0 - tokens) / self.rate


# ------------------------------------------------------------------------------------------- validation
def validate_vote(payload, content: dict) -> dict:
    """Check a vote against the arena's items and prompts; return it normalised or raise VoteError.

    ``prompt`` is null (item-level vote), a prompt id (as ``/api/next`` gives it) or the prompt's text;
    every candidate must then have a response to it. ``ranks``: one integer per candidate, 0 best, equal
    ranks tie (the rules of :class:`rankalign.data.RankedList`), every candidate ranked.
    """
    if not isinstance(payload, dict):
        raise VoteError("the body must be a JSON object")
    unknown = sorted(set(payload) - VOTE_FIELDS)
    if unknown:
        raise VoteError(f"unknown field(s): {', '.join(unknown)} (accepted: {', '.join(sorted(VOTE_FIELDS))})",
                        unknown[0])
    request_id = payload.get("request_id")
    if not isinstance(request_id, str) or not REQUEST_ID.match(request_id):
        raise VoteError("request_id must be 1-100 characters of letters, digits and ._:-", "request_id")
    candidates = payload.get("candidates")
    if not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates):
        raise VoteError("candidates must be a list of item ids (strings)", "candidates")
    if not 2 <= len(candidates) <= MAX_K:
        raise VoteError(f"a vote compares 2 to {MAX_K} items, got {len(candidates)}", "candidates")
    known = content["item_ids"]
    for i, item in enumerate(candidates):
        if item not in known:
            raise VoteError(f"unknown item {item!r}", f"candidates[{i}]")
    ranks = payload.get("ranks")
    if not isinstance(ranks, list):
        raise VoteError("ranks must be a list with one integer per candidate", "ranks")
    for i, rank in enumerate(ranks):  # RankedList would take null (unranked); a vote ranks every candidate
        if isinstance(rank, bool) or not (isinstance(rank, int) or (isinstance(rank, float) and rank.is_integer())):
            raise VoteError(f"a rank must be an integer (every candidate is ranked), got {json.dumps(rank)[:40]}",
                            f"ranks[{i}]")
    try:
        record = RankedList(candidates=candidates, ranks=ranks)
    except DataError as error:
        raise VoteError(error.message, error.field) from None
    prompt = payload.get("prompt")
    prompt_id = None
    if prompt is not None:
        if isinstance(prompt, int) and not isinstance(prompt, bool):
            prompt_id = prompt if prompt in content["prompts"] else None
        elif isinstance(prompt, str):
            prompt_id = content["prompt_ids"].get(prompt)
        if prompt_id is None:
            raise VoteError("unknown prompt (give the id from /api/next, its text, or null)", "prompt")
        answers = content["responses"].get(prompt_id, {})
        for i, item in enumerate(candidates):
            if item not in answers:
                raise VoteError(f"item {item!r} has no response to this prompt", f"candidates[{i}]")
    comment = payload.get("comment")
    if comment is not None:
        if not isinstance(comment, str):
            raise VoteError("comment must be a string", "comment")
        if len(comment) > MAX_COMMENT:
            raise VoteError(f"comment is longer than {MAX_COMMENT} characters", "comment")
        comment = comment.strip() or None
    return {"request_id": request_id, "candidates": list(record.candidates), "ranks": list(record.ranks),
            "prompt_id": prompt_id, "comment": comment}


# ------------------------------------------------------------------------------------------- state
class Arena:
    """What one server process holds: the engine, the fixed content, the sampler's belief, the limiters."""

    def __init__(self, url, *, sampler="info", k=2, prior=0.01, per_minute=120.0, burst=60, exploration=1.0,
                 prior_variance=1.0, seed=None):
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        self.engine = db.connect(url)
        self.sampler, self.k, self.prior = sampler, k, prior
        self.exploration, self.prior_variance = exploration, prior_variance
        self.limiter = RateLimiter(per_minute, burst)
        self.failures = RateLimiter(30.0, 10)  # bad tokens, per client address
        self.rng = np.random.default_rng(seed)
        self.rng_lock = threading.Lock()
        catalogue = db.catalogue(self.engine)
        self.items = catalogue["items"]
        if len(self.items) < 2:
            raise ValueError("the arena has no items yet: run `rankalign arena init` first")
        self.content = {
            "item_ids": {item["id"] for item in self.items},
            "prompts": catalogue["prompts"],
            "prompt_ids": {text: pid for pid, text in catalogue["prompts"].items()},
            "responses": catalogue["responses"],
        }
        self.index = {item["id"]: i for i, item in enumerate(self.items)}
        self.belief_lock = threading.Lock()
        self.seen_vote, self.seen_count = 0, 0  # the largest vote id and the number of votes in the belief
        self.pairs = [np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)]  # first, second, outcome
        self.belief = (np.zeros(len(self.items)), np.eye(len(self.items)) * prior_variance)
        self.board_lock = threading.Lock()
        self.board_cache: dict = {}

    # -- sampler ---------------------------------------------------------------------------------------
    def current_belief(self):
        with self.belief_lock:
            rows = db.vote_rows(self.engine, after_id=self.seen_vote)
            if db.vote_count(self.engine) > self.seen_count + len(rows):
                # a vote committed after one with a larger id (concurrent PostgreSQL transactions take ids
                # from a sequence before they commit): reading on from the largest id would skip it for good
                rows = db.vote_rows(self.engine)
                self.pairs = [np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)]
                self.seen_count = 0
            if rows:
                new = vote_comparisons([([self.index[c] for c in row.candidates], list(row.ranks)) for row in rows])
                self.pairs = [np.concatenate([old, more]) for old, more in zip(self.pairs, new)]
                self.seen_vote = max(self.seen_vote, rows[-1].id)
                self.seen_count += len(rows)
                self.belief = bt_posterior(len(self.items), *self.pairs, prior_variance=self.prior_variance)
            return self.belief

    def next_task(self, k: int) -> dict:
        mean, cov = self.current_belief()
        with self.rng_lock:
            prompt_id, allowed = None, None
            if self.content["prompts"]:
                usable = [pid for pid, answers in self.content["responses"].items() if len(answers) >= k]
                if not usable:
                    raise VoteError(f"no prompt has responses from {k} items", "k")
                prompt_id = usable[int(self.rng.integers(len(usable)))]
                allowed = [self.index[item] for item in self.content["responses"][prompt_id]]
            elif k > len(self.items):
                raise VoteError(f"the arena has only {len(self.items)} items", "k")
            chosen = choose(self.sampler, mean, cov, k, self.rng, allowed=allowed, exploration=self.exploration)
        answers = self.content["responses"].get(prompt_id, {})
        return {
            "prompt": None if prompt_id is None else {"id": prompt_id, "text": self.content["prompts"][prompt_id]},
            "candidates": [{"id": self.items[i]["id"], "name": self.items[i]["name"],
                            "content": self.items[i]["content"], "response": answers.get(self.items[i]["id"])}
                           for i in chosen],
            "k": k,
            "sampler": self.sampler,
        }

    # -- leaderboard ----------------------------------------------------------------------------------
    def leaderboard(self, model="bt", prior=None, reference=None, scale="logit") -> dict:
        """``rankalign rate EXPORT --model M --prior A [--reference R] --scale S --json``, cached per vote."""
        from rankalign.stats.cli import fit_file

        prior = self.prior if prior is None else prior
        key = (*db.vote_stamp(self.engine), model, prior, reference, scale)
        with self.board_lock:
            if key in self.board_cache:
                return self.board_cache[key]
            records, _ = vote_records(self.engine, "items")
            if not records:
                board = {"model": None, "scale": scale, "items": [], "votes": 0, "error": "no votes yet"}
            else:
                with tempfile.TemporaryDirectory() as folder:
                    path = Path(folder) / "votes.jsonl"
                    write(records, path)
                    try:
                        result, _ = fit_file(path, model=model, prior=prior, reference=reference)
                        board = result.to_scale("natural" if scale == "logit" else scale).to_dict()
                    except (DataError, ValueError) as error:
                        if isinstance(error, DataError):  # the line is the vote's line in the export
                            error = DataError(error.message, line=error.line, field=error.field)
                        board = {"model": None, "scale": scale, "items": [],
                                 "error": str(error).replace(str(path) + ": ", "")}
                board["votes"] = len(records)
            self.board_cache = {key: board}
            return board


# ------------------------------------------------------------------------------------------- helpers
def _error(status, message, field=None, headers=None):
    body = {"error": message}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers)


def _token(request: Request, *, allow_cookie: bool = True) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    if allow_cookie:
        return request.cookies.get(COOKIE)
    return None


async def _authenticate(request: Request, arena: Arena, *, admin=False):
    """``(annotator row, None)`` or ``(None, error response)``: 401 bad token, 403 not admin, 429 rate."""
    token = _token(request)
    client = request.client.host if request.client else "unknown"
    if not token or len(token) > 200:
        return None, _error(401, "missing or malformed token (Authorization: Bearer TOKEN)")
    annotator = await run_in_threadpool(db.find_annotator, arena.engine, token)
    if annotator is None:
        wait = arena.failures.allow(client)
        if wait:
            return None, _error(429, "too many bad tokens", headers={"Retry-After": str(math.ceil(wait))})
        return None, _error(401, "unknown token")
    wait = arena.limiter.allow(db.hash_token(token))
    if wait:
        return None, _error(429, "rate limit reached for this token", headers={"Retry-After": str(math.ceil(wait))})
    if admin and not annotator.is_admin:
        return None, _error(403, "this needs an admin token")
    return annotator, None


def _same_origin(request: Request) -> bool:
    """Cookie-authenticated writes must come from our own pages (SameSite=Strict covers the rest)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin.split("://", 1)[-1] == request.headers.get("host")


async def _capped_body(request: Request) -> bytes | None:
    """The request body, or None as soon as it is known to exceed MAX_BODY (nothing more is read)."""
    declared = request.headers.get("content-length") or "0"
    if not declared.isdigit() or int(declared) > MAX_BODY:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


# ------------------------------------------------------------------------------------------- API
async def health(request: Request):
    arena: Arena = request.app.state.arena
    count = await run_in_threadpool(db.vote_count, arena.engine)
    return JSONResponse({"status": "ok", "items": len(arena.items), "prompts": len(arena.content["prompts"]),
                         "votes": count, "sampler": arena.sampler})


async def next_task(request: Request):
    arena: Arena = request.app.state.arena
    annotator, failure = await _authenticate(request, arena)
    if failure:
        return failure
    try:
        k = int(request.query_params.get("k", arena.k))
    except ValueError:
        return _error(422, "k must be an integer", "k")
    if not 2 <= k <= MAX_K:
        return _error(422, f"k must be between 2 and {MAX_K}", "k")
    done = await run_in_threadpool(db.vote_count, arena.engine, annotator.id)
    if annotator.quota is not None and done >= annotator.quota:
        return JSONResponse({"done": True, "reason": f"quota of {annotator.quota} votes reached", "votes": done})
    try:
        task = await run_in_threadpool(arena.next_task, k)
    except VoteError as error:
        return _error(422, str(error), error.field)
    task["votes"] = done
    task["remaining"] = None if annotator.quota is None else annotator.quota - done
    return JSONResponse(task)


async def post_vote(request: Request):
    arena: Arena = request.app.state.arena
    annotator, failure = await _authenticate(request, arena)
    if failure:
        return failure
    if _token(request, allow_cookie=False) is None and not _same_origin(request):
        return _error(403, "cross-origin request")
    if "application/json" not in request.headers.get("content-type", ""):
        return _error(415, "send the vote as application/json")
    body = await _capped_body(request)
    if body is None:
        return _error(413, f"body larger than {MAX_BODY} bytes")
    try:
        payload = loads_json(body.decode("utf-8"))
    except UnicodeDecodeError as error:
        return _error(422, f"malformed JSON: {error}")
    except DataError as error:  # malformed, nested too deeply, or a key named twice
        return _error(422, error.message, error.field)
    try:
        vote = validate_vote(payload, arena.content)
    except VoteError as error:
        return _error(422, str(error), error.field)
    try:
        vote_id, created = await run_in_threadpool(db.insert_vote, arena.engine, annotator.id, annotator.quota,
                                                   vote)
    except PermissionError as error:
        return _error(403, str(error))
    except ValueError as error:
        return _error(409, str(error), "request_id")
    return JSONResponse({"id": vote_id, "request_id": vote["request_id"], "created": created},
                        status_code=201 if created else 200)


def _float_param(request, name, default, low=0.0):
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = float(raw)
    if not math.isfinite(value) or value < low:
        raise ValueError(f"{name} must be a finite number >= {low}")
    return value


async def leaderboard_api(request: Request):
    arena: Arena = request.app.state.arena
    params = request.query_params
    model = params.get("model", "bt")
    scale = params.get("scale", "logit")
    if model not in RATE_MODELS:
        return _error(422, f"model must be one of {', '.join(RATE_MODELS)}", "model")
    if scale not in ("logit", "elo"):
        return _error(422, "scale must be logit or elo", "scale")
    reference = params.get("reference")
    if reference is not None and reference not in arena.content["item_ids"]:
        return _error(422, "unknown reference item", "reference")
    try:
        prior = _float_param(request, "prior", None)
    except ValueError as error:
        return _error(422, str(error), "prior")
    board = await run_in_threadpool(arena.leaderboard, model, prior, reference, scale)
    return JSONResponse(board)


async def export_api(request: Request):
    arena: Arena = request.app.state.arena
    _, failure = await _authenticate(request, arena, admin=True)
    if failure:
        return failure
    form = request.query_params.get("form", "items")
    try:
        records, dropped = await run_in_threadpool(vote_records, arena.engine, form)
    except ValueError as error:
        return _error(422, str(error), "form")
    text = "".join(json.dumps(record.to_dict(), ensure_ascii=False) + "\n" for record in records)
    headers = {"X-Dropped": json.dumps(dict(dropped))} if dropped else {}
    return Response(text, media_type="application/x-ndjson", headers=headers)


# ------------------------------------------------------------------------------------------- pages
def _templates() -> Environment:
    return Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))


def _page(request: Request, template_name: str, status=200, **context):
    template = request.app.state.templates.get_template(template_name)
    return HTMLResponse(template.render(**context), status_code=status)


async def home(request: Request):
    return _page(request, "login.html", error=None)


async def login(request: Request):
    arena: Arena = request.app.state.arena
    if not _same_origin(request):
        return _page(request, "login.html", status=403, error="Cross-origin sign-in refused.")
    body = await _capped_body(request)
    if body is None:
        return _page(request, "login.html", status=413, error=f"Request larger than {MAX_BODY} bytes.")

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form()
    token = str(form.get("token", "")).strip()
    client = request.client.host if request.client else "unknown"
    annotator = await run_in_threadpool(db.find_annotator, arena.engine, token) if 0 < len(token) <= 200 else None
    if annotator is None:
        wait = arena.failures.allow(client)
        message = "Too many attempts; wait a minute." if wait else "Unknown token."
        return _page(request, "login.html", status=401, error=message)
    response = RedirectResponse("/admin" if annotator.is_admin else "/vote", status_code=303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", max_age=30 * 24 * 3600,
                        secure=request.url.scheme == "https")
    return response


async def logout(request: Request):
    if not _same_origin(request):
        return _page(request, "login.html", status=403, error="Cross-origin sign-out refused.")
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE)
    return response


async def _signed_in(request: Request):
    """The annotator of the page's session cookie, or None."""
    token = request.cookies.get(COOKIE)
    if not token or len(token) > 200:
        return None
    return await run_in_threadpool(db.find_annotator, request.app.state.arena.engine, token)


async def vote_page(request: Request):
    arena: Arena = request.app.state.arena
    annotator = await _signed_in(request)
    if annotator is None:
        return RedirectResponse("/", status_code=303)
    try:
        k = int(request.query_params.get("k", arena.k))
    except ValueError:
        k = arena.k
    return _page(request, "vote.html", name=annotator.name, k=max(2, min(MAX_K, k)))


def board_geometry(board: dict) -> dict:
    """Positions (0-100) of each item's point and interval on a shared axis, for the SVG bars."""
    rows = [dict(row) for row in board.get("items", [])]
    values = [v for row in rows for v in (row["ci_low"], row["ci_high"], row["rating"]) if v is not None]
    low, high = (min(values), max(values)) if values else (-1.0, 1.0)
    pad = max(0.05 * (high - low), 1e-6)
    low, high = low - pad, high + pad

    def x(value):
        return 100.0 * (value - low) / (high - low)

    for row in rows:
        rating = row["rating"]
        ci_low = rating if row["ci_low"] is None else row["ci_low"]
        ci_high = rating if row["ci_high"] is None else row["ci_high"]
        row["dot_x"], row["bar_x"] = round(x(rating), 3), round(x(ci_low), 3)
        row["bar_w"] = round(max(x(ci_high) - x(ci_low), 0.3), 3)
    zero = x(0.0) if low <= 0.0 <= high else -10.0
    return {**board, "items": rows, "zero": round(zero, 3)}


async def leaderboard_page(request: Request):
    arena: Arena = request.app.state.arena
    board = board_geometry(await run_in_threadpool(arena.leaderboard))
    names = {item["id"]: item["name"] for item in arena.items}
    template = "board.html" if request.url.path.endswith("/board") else "leaderboard.html"
    return _page(request, template, board=board, names=names, zero=board["zero"])


async def admin_page(request: Request):
    arena: Arena = request.app.state.arena
    annotator = await _signed_in(request)
    if annotator is None:
        return RedirectResponse("/", status_code=303)
    if not annotator.is_admin:
        return _page(request, "login.html", status=403, error="The admin page needs an admin token.")
    people = await run_in_threadpool(db.annotator_table, arena.engine)
    rows = await run_in_threadpool(db.vote_rows, arena.engine)
    return _page(request, "admin.html", items=arena.items, annotators=people, agreement=agreement(rows),
                 votes=len(rows), prompts=len(arena.content["prompts"]), sampler=arena.sampler,
                 comments=[(r.annotator, r.comment) for r in rows if r.comment][-20:])


class SecurityHeaders:
    """ASGI middleware: a strict CSP (no inline script or style), no sniffing, no framing."""

    HEADERS = [
        (b"content-security-policy",
         b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
    ]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + self.HEADERS
            await send(message)

        return await self.app(scope, receive, send_with_headers)


def create_app(url: str, **settings) -> Starlette:
    """The ASGI app for the arena database at ``url``; ``settings`` go to :class:`Arena`."""
    routes = [
        Route("/api/health", health),
        Route("/api/next", next_task),
        Route("/api/votes", post_vote, methods=["POST"]),
        Route("/api/leaderboard", leaderboard_api),
        Route("/api/export", export_api),
        Route("/", home),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/vote", vote_page),
        Route("/leaderboard", leaderboard_page),
        Route("/leaderboard/board", leaderboard_page),
        Route("/admin", admin_page),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.arena = Arena(url, **settings)
    app.state.templates = _templates()
    app.add_middleware(SecurityHeaders)
    return app
