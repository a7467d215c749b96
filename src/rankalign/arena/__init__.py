"""rankalign.arena: collect pairwise and K-wise votes in a web arena, straight into the record model.

* :func:`create_app` -- the Starlette app (JSON API + vote, leaderboard and admin pages) over a SQLite
  or PostgreSQL database; ``rankalign arena serve`` runs it with uvicorn.
* :mod:`rankalign.arena.db` -- the schema (Alembic migrations), tokens (stored hashed), durable writes.
* :func:`vote_records` -- every vote as a :class:`rankalign.data.RankedList` with its annotator, what
  ``rankalign arena export`` writes and ``rankalign rate`` / ``train`` read.
* :mod:`rankalign.arena.sampling` -- Bayesian Bradley-Terry beliefs and the next-task rules
  (expected information gain, K-Sort-style UCB, uniform); :mod:`rankalign.arena.study` the simulation.

Needs the ``arena`` extra (starlette, uvicorn, SQLAlchemy, Alembic, psycopg, Jinja2).
"""

from .app import Arena, RateLimiter, VoteError, create_app, validate_vote
from .db import add_annotator, connect, hash_token, load_items, migrate, open_database
from .items import read_items
from .records import agreement, vote_records
from .sampling import SAMPLERS, bt_posterior, choose, pair_information, vote_comparisons

__all__ = [
    "create_app", "Arena", "RateLimiter", "VoteError", "validate_vote",
    "connect", "open_database", "migrate", "add_annotator", "load_items", "hash_token", "read_items",
    "vote_records", "agreement", "SAMPLERS", "bt_posterior", "choose", "pair_information", "vote_comparisons",
]
