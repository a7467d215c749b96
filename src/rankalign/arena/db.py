"""The arena's storage: one schema for SQLite (default) and PostgreSQL, migrated with Alembic.

Tables
------
``items``       the things compared (models, systems): ``id``, ``name``, optional ``content``.
``prompts``     prompts, when items answer prompts; ``responses`` holds each item's answer to a prompt.
``annotators``  people (or scripts) with a token; only the SHA-256 of the token is stored.
``votes``       one judgment each: the candidates (item ids, JSON), their ranks (JSON, 0 best, equal = tie),
                the prompt (or NULL), an optional comment, and the annotator's ``request_id``; the pair
                (annotator, request_id) is unique, which makes a retried POST idempotent.

Durability: SQLite runs in WAL mode with ``synchronous=FULL`` (a transaction is on disk when COMMIT
returns) and every write transaction starts with ``BEGIN IMMEDIATE`` (writers queue on the busy timeout
instead of failing on a read-to-write lock upgrade). PostgreSQL commits are durable by default
(``synchronous_commit=on``). A vote is acknowledged only after its COMMIT returned.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine, make_url

from rankalign.errors import RankalignError, UsageError

# the largest quota: PostgreSQL's INTEGER column holds 32-bit values
MAX_QUOTA = 2**31 - 1

metadata = MetaData()

items = Table(
    "items", metadata,
    Column("id", String(200), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("content", Text, nullable=True),
    Column("position", Integer, nullable=False),
)

prompts = Table(
    "prompts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("text", Text, nullable=False),
)

responses = Table(
    "responses", metadata,
    Column("prompt_id", Integer, ForeignKey("prompts.id"), primary_key=True),
    Column("item_id", String(200), ForeignKey("items.id"), primary_key=True),
    Column("text", Text, nullable=False),
)

annotators = Table(
    "annotators", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("quota", Integer, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

votes = Table(
    "votes", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("annotator_id", Integer, ForeignKey("annotators.id"), nullable=False, index=True),
    Column("request_id", String(100), nullable=False),
    Column("prompt_id", Integer, ForeignKey("prompts.id"), nullable=True),
    Column("candidates", JSON, nullable=False),
    Column("ranks", JSON, nullable=False),
    Column("comment", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("annotator_id", "request_id", name="uq_votes_annotator_request"),
)

MIGRATIONS = Path(__file__).with_name("migrations")


# ------------------------------------------------------------------------------------------- engine
def normalise_url(url: str) -> str:
    """Accept a plain path (SQLite file), ``sqlite:///...`` or ``postgresql://...`` (driver: psycopg 3)."""
    if "://" not in url:
        return f"sqlite:///{Path(url).resolve()}"
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def connect(url: str, *, pool_size: int = 10) -> Engine:
    """An engine for ``url`` with the durability settings of the module docstring."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30.0, "check_same_thread": False},
                               pool_size=pool_size, max_overflow=2 * pool_size)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection):
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=2 * pool_size, pool_pre_ping=True)


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite database URL (or plain path), or None (another database, or in memory)."""
    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def open_database(url: str, *, create: bool = False) -> Engine:
    """An engine on ``url`` with the schema brought up to date, or a one-line :class:`RankalignError`.

    Only ``create=True`` (``rankalign arena init``) creates a database; otherwise a SQLite file that does
    not exist is refused before anything is written, and so is a database without the arena's tables.
    Every failure to reach the database (no driver, not a database, no such folder, server down) names the
    URL (password hidden) and the cause.
    """
    from sqlalchemy import inspect
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError
    from sqlalchemy.pool import NullPool

    init_hint = f"create it with `rankalign arena init --db {url} --items ITEMS.jsonl`"
    try:
        shown = url if "://" not in url else make_url(url).render_as_string(hide_password=True)
        path = sqlite_path(url)
    except ArgumentError as error:
        raise UsageError(f"cannot read the database URL {url!r}: {error}") from None
    if path is not None:
        if path.is_dir():
            raise RankalignError(f"the database {shown} is a folder, not a SQLite file")
        if not create and not path.exists():
            raise RankalignError(f"no arena database at {shown}", hint=init_hint)
        if not path.parent.is_dir():
            raise RankalignError(f"cannot create the database {shown}: the folder {path.parent} does not exist")
    try:
        if not create:  # look without the durability pragmas, which would write to a file that is not ours
            probe = create_engine(normalise_url(url), poolclass=NullPool)
            try:
                with probe.connect() as connection:
                    found = set(inspect(connection).get_table_names())
            finally:
                probe.dispose()
            if not {"items", "annotators"} <= found:  # the first schema's core; later ones are migrated in
                raise RankalignError(f"{shown} is not an arena database (no items and annotators tables)",
                                     hint=init_hint)
        engine = connect(url)
        migrate(engine)
    except ImportError as error:
        raise RankalignError(f"cannot open the database {shown}: its driver {error.name} is not installed",
                             hint="the arena runs on SQLite or on PostgreSQL with psycopg: "
                                  "pip install 'rankalign[arena]'") from None
    except SQLAlchemyError as error:
        raise RankalignError(f"cannot open the database {shown}: {getattr(error, 'orig', None) or error}") from None
    return engine


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` with the Alembic scripts shipped in ``rankalign/arena/migrations``."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


# ------------------------------------------------------------------------------------------- tokens
def hash_token(token: str) -> str:
    """SHA-256 hex digest of a token. Tokens are 256-bit random strings, so a fast hash is enough:
    there is nothing to brute-force, and a leaked database does not reveal a usable token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def now() -> datetime:
    return datetime.now(UTC)


def utc_iso(moment: datetime | None) -> str | None:
    """A stored time as ISO 8601 in UTC with its offset, the same text from every backend: SQLite gives the
    UTC time back without a zone, PostgreSQL with the session's zone."""
    if moment is None:
        return None
    return (moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)).isoformat()


# ------------------------------------------------------------------------------------------- writes
def load_items(engine: Engine, records: list[dict]) -> dict:
    """Insert validated item records (see :func:`rankalign.arena.items.read_items`); return counts.

    Raises ValueError when the arena already holds items (an arena's items are fixed at ``init``).
    """
    with engine.begin() as connection:
        if connection.execute(select(func.count()).select_from(items)).scalar_one():
            raise ValueError("this arena already has items; create a new database for a new item set")
        prompt_ids: dict[str, int] = {}
        n_responses = 0
        for position, record in enumerate(records):
            connection.execute(items.insert().values(id=record["id"], name=record["name"],
                                                     content=record.get("content"), position=position))
        for record in records:
            for prompt_text, answer in record.get("responses", {}).items():
                if prompt_text not in prompt_ids:
                    prompt_ids[prompt_text] = connection.execute(
                        prompts.insert().values(text=prompt_text)).inserted_primary_key[0]
                connection.execute(responses.insert().values(prompt_id=prompt_ids[prompt_text],
                                                             item_id=record["id"], text=answer))
                n_responses += 1
    return {"items": len(records), "prompts": len(prompt_ids), "responses": n_responses}


def add_annotator(engine: Engine, name: str, *, admin: bool = False, quota: int | None = None) -> str:
    """Create an annotator and return its token (shown once; only its hash is stored)."""
    if not name or len(name) > 200 or not name.strip():
        raise ValueError("an annotator name must be 1-200 characters, not blank")
    if quota is not None and not 0 <= quota <= MAX_QUOTA:
        raise ValueError(f"quota must be between 0 and {MAX_QUOTA}, got {quota}")
    token = new_token()
    with engine.begin() as connection:
        exists = connection.execute(select(annotators.c.id).where(annotators.c.name == name)).first()
        if exists:
            raise ValueError(f"an annotator named {name!r} already exists")
        connection.execute(annotators.insert().values(name=name, token_hash=hash_token(token), is_admin=admin,
                                                      quota=quota, created_at=now()))
    return token


def insert_vote(engine: Engine, annotator_id: int, quota: int | None, vote: dict) -> tuple[int, bool]:
    """Store a validated vote once per (annotator, request_id); return ``(vote id, created)``.

    The annotator's row is locked first (``SELECT ... FOR UPDATE`` on PostgreSQL, the database write lock
    of ``BEGIN IMMEDIATE`` on SQLite), so that a retry racing its original and the quota check see every
    earlier vote of this annotator. A replayed ``request_id`` whose content differs (candidates, ranks, prompt
    or comment) raises ValueError.
    Raises PermissionError when the annotator's quota is used up.
    """
    with engine.begin() as connection:
        connection.execute(select(annotators.c.id).where(annotators.c.id == annotator_id).with_for_update())
        existing = connection.execute(
            select(votes.c.id, votes.c.candidates, votes.c.ranks, votes.c.prompt_id, votes.c.comment)
            .where(votes.c.annotator_id == annotator_id, votes.c.request_id == vote["request_id"])).first()
        if existing is not None:
            same = (list(existing.candidates) == vote["candidates"] and list(existing.ranks) == vote["ranks"]
                    and existing.prompt_id == vote["prompt_id"] and existing.comment == vote.get("comment"))
            if not same:
                raise ValueError(f"request_id {vote['request_id']!r} was already used for a different vote")
            return existing.id, False
        if quota is not None:
            done = connection.execute(select(func.count()).select_from(votes)
                                      .where(votes.c.annotator_id == annotator_id)).scalar_one()
            if done >= quota:
                raise PermissionError(f"quota of {quota} votes reached")
        vote_id = connection.execute(votes.insert().values(
            annotator_id=annotator_id, request_id=vote["request_id"], prompt_id=vote["prompt_id"],
            candidates=vote["candidates"], ranks=vote["ranks"], comment=vote.get("comment"),
            created_at=now())).inserted_primary_key[0]
    return vote_id, True


# ------------------------------------------------------------------------------------------- reads
def find_annotator(engine: Engine, token: str):
    """The annotator row for ``token`` (id, name, is_admin, quota), or None."""
    with engine.connect() as connection:
        return connection.execute(
            select(annotators.c.id, annotators.c.name, annotators.c.is_admin, annotators.c.quota)
            .where(annotators.c.token_hash == hash_token(token))).first()


def catalogue(engine: Engine) -> dict:
    """Items (in file order), prompts and which item answered which prompt: the arena's fixed content."""
    with engine.connect() as connection:
        item_rows = connection.execute(select(items).order_by(items.c.position)).all()
        prompt_rows = connection.execute(select(prompts).order_by(prompts.c.id)).all()
        response_rows = connection.execute(select(responses)).all()
    answers: dict[int, dict[str, str]] = {}
    for row in response_rows:
        answers.setdefault(row.prompt_id, {})[row.item_id] = row.text
    return {
        "items": [{"id": r.id, "name": r.name, "content": r.content} for r in item_rows],
        "prompts": {r.id: r.text for r in prompt_rows},
        "responses": answers,
    }


def vote_rows(engine: Engine, after_id: int = 0):
    """All votes with id > ``after_id`` joined with their annotator's name, in id order."""
    with engine.connect() as connection:
        return connection.execute(
            select(votes.c.id, votes.c.request_id, votes.c.prompt_id, votes.c.candidates, votes.c.ranks,
                   votes.c.comment, votes.c.created_at, annotators.c.name.label("annotator"))
            .join(annotators, annotators.c.id == votes.c.annotator_id)
            .where(votes.c.id > after_id).order_by(votes.c.id)).all()


def vote_count(engine: Engine, annotator_id: int | None = None) -> int:
    query = select(func.count()).select_from(votes)
    if annotator_id is not None:
        query = query.where(votes.c.annotator_id == annotator_id)
    with engine.connect() as connection:
        return connection.execute(query).scalar_one()


def vote_stamp(engine: Engine) -> tuple[int, int]:
    """``(number of votes, largest vote id)``: changes whenever a vote is added."""
    with engine.connect() as connection:
        count, last = connection.execute(select(func.count(), func.max(votes.c.id)).select_from(votes)).one()
    return int(count), int(last or 0)


def annotator_table(engine: Engine) -> list[dict]:
    """Every annotator with its vote count and quota (no token material)."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(annotators.c.name, annotators.c.is_admin, annotators.c.quota, annotators.c.created_at,
                   func.count(votes.c.id).label("votes"))
            .select_from(annotators.outerjoin(votes, votes.c.annotator_id == annotators.c.id))
            .group_by(annotators.c.id).order_by(annotators.c.id)).all()
    return [{"name": r.name, "admin": bool(r.is_admin), "quota": r.quota, "votes": int(r.votes),
             "created_at": utc_iso(r.created_at)} for r in rows]


def dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False)
