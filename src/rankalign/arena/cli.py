"""`rankalign arena init|add-annotator|serve|export|simulate`: thin commands over rankalign.arena."""

from __future__ import annotations

import click

from rankalign._cli import FiniteFloat, deprecated_option, output_option, resolve_deprecated
from rankalign.data.errors import DataError
from rankalign.errors import RankalignError

from .db import MAX_QUOTA
from .sampling import SAMPLERS

_db_option = click.option("--db", "url", required=True, metavar="URL",
                          help="sqlite:///arena.db (or a plain path) or postgresql://user@host/dbname.")


@click.group()
def arena():
    """Collect pairwise and K-wise votes in a web arena; export them as rankalign records."""


@arena.command("init")
@_db_option
@click.option("--items", "items_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="JSONL: one item per line with id, name, optional content and responses {prompt: text}.")
@click.option("--admin-name", default="admin", show_default=True, help="Name of the admin account created.")
def init(url, items_path, admin_name):
    """Create the schema (Alembic migrations), load the items and print an admin token (last line)."""
    from . import db
    from .items import read_items

    try:
        records = read_items(items_path)
    except DataError as error:
        raise click.ClickException(str(error)) from None
    engine = db.open_database(url, create=True)
    try:
        counts = db.load_items(engine, records)
        token = db.add_annotator(engine, admin_name, admin=True)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"arena ready: {counts['items']} items, {counts['prompts']} prompts, {counts['responses']} "
               f"responses; admin account {admin_name!r}. Admin token:")
    click.echo(token)


@arena.command("add-annotator")
@click.argument("name")
@_db_option
@click.option("--admin", is_flag=True, help="Give the account the admin role (admin page, export).")
@click.option("--quota", type=click.IntRange(0, MAX_QUOTA), default=None, help="At most this many votes.")
def add_annotator_command(name, url, admin, quota):
    """Create an annotator NAME and print its token (last line; only its hash is stored)."""
    from . import db

    try:
        token = db.add_annotator(db.open_database(url), name, admin=admin, quota=quota)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"annotator {name!r} created{' (admin)' if admin else ''}"
               f"{'' if quota is None else f', quota {quota} votes'}. Token:")
    click.echo(token)


@arena.command("serve")
@_db_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--sampler", type=click.Choice(SAMPLERS), default="info", show_default=True,
              help="info: expected information gain; ucb: K-Sort-style UCB match-making; uniform: at random.")
@click.option("--k", type=click.IntRange(2, 8), default=2, show_default=True,
              help="Candidates per task by default (the vote page and /api/next?k= can ask for others).")
@click.option("--prior", type=FiniteFloat(min=0.0), default=0.01, show_default=True,
              help="Leaderboard prior: the same numbers as `rankalign rate EXPORT --prior ALPHA --json`.")
@click.option("--rate-limit", "per_minute", type=FiniteFloat(min=0.0), default=120.0, show_default=True,
              help="Requests per minute per token (0: no limit).")
@click.option("--burst", type=click.IntRange(min=1), default=60, show_default=True,
              help="Requests a token may make at once before the rate limit applies.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed of the sampler (default: random).")
def serve(url, host, port, sampler, k, prior, per_minute, burst, seed):
    """Run the arena server (uvicorn). Stop it with Ctrl-C; every acknowledged vote is committed."""
    import uvicorn

    from . import db
    from .app import create_app

    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: listening on {host}, reachable from other machines; put TLS in front.", err=True)
    db.open_database(url).dispose()
    try:
        app = create_app(url, sampler=sampler, k=k, prior=prior, per_minute=per_minute, burst=burst, seed=seed)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    listener = _listen(host, port)
    shown_host = f"[{host}]" if ":" in host else host
    click.echo(f"serving the arena at http://{shown_host}:{listener.getsockname()[1]}/ (Ctrl-C stops it)", err=True)
    try:
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run(sockets=[listener])
    except KeyboardInterrupt:  # Ctrl-C is the way to stop it (as uvicorn.run does)
        pass


def _listen(host: str, port: int):
    """A socket bound to ``host:port`` (as uvicorn binds it), or a ClickException saying why not."""
    import socket

    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise click.ClickException(f"cannot listen on {host} port {port}: {error.strerror or error}") from None
    return listener


@arena.command("export")
@_db_option
@click.argument("legacy_out", metavar="[OUT]", required=False, type=click.Path(dir_okay=False))
@output_option("the records (JSONL, CSV, JSON or Parquet by extension)")
@click.option("--form", type=click.Choice(["items", "responses"]), default="items", show_default=True,
              help="items: candidates are item ids (for `rankalign rate`); responses: the response texts "
                   "(for `rankalign train`).")
def export(url, legacy_out, output, form):
    """Write every vote as a rankalign record to -o/--output, atomically (a positional OUT still works,
    deprecated)."""
    out = resolve_deprecated(output, legacy_out, new="-o/--output", old="the positional OUT")
    if out is None:
        raise click.UsageError("give the output file with -o/--output PATH")
    from rankalign._cli import refuse_overwriting_inputs
    from rankalign.data import detect_format
    from rankalign.data.readers import write

    from . import db
    from .records import vote_records

    try:
        writable = detect_format(out) in ("jsonl", "json", "csv", "parquet")
    except DataError:
        writable = False
    if not writable:
        raise click.BadParameter(f"cannot tell what to write to {out} from its extension; export writes .jsonl, "
                                 ".json, .csv or .parquet", param_hint="-o/--output")
    engine = db.open_database(url)
    refuse_overwriting_inputs(db.sqlite_path(url), out)
    records, dropped = vote_records(engine, form)
    count = write(records, out)
    click.echo(f"wrote {count} records to {out}")
    for reason, n in dropped.items():
        click.echo(f"left out {n} votes: {reason}", err=True)


def _targets(ctx, param, value):
    """``--targets``: distinct Kendall tau levels in [-1, 1], comma-separated."""
    levels = []
    for part in value.split(","):
        try:
            level = float(part)
        except ValueError:
            raise click.BadParameter(f"{part.strip()!r} is not a number (give levels such as 0.8,0.9)") from None
        if not -1.0 <= level <= 1.0:
            raise click.BadParameter(f"{part.strip()} is outside Kendall tau's range [-1, 1]")
        if level in levels:
            raise click.BadParameter(f"{part.strip()} is given twice")
        levels.append(level)
    return levels


def _samplers(ctx, param, value):
    """``--samplers``: one or more distinct sampler names, comma-separated."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise click.BadParameter(f"name at least one sampler: {', '.join(SAMPLERS)}")
    for name in names:
        if name not in SAMPLERS:
            raise click.BadParameter(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
        if names.count(name) > 1:
            raise click.BadParameter(f"{name} is given twice")
    return names


@arena.command("simulate")
@click.option("--items", "n_items", type=click.IntRange(min=3), default=16, show_default=True,
              help="Items in the simulated arena.")
@click.option("--annotators", "n_annotators", type=click.IntRange(min=1), default=20, show_default=True,
              help="Simulated annotators.")
@click.option("--k", type=click.IntRange(2, 8), default=2, show_default=True, help="Items shown per vote.")
@click.option("--votes", "budget", type=click.IntRange(min=10), default=400, show_default=True,
              help="Votes per simulated run.")
@click.option("--repeats", type=click.IntRange(min=1), default=20, show_default=True,
              help="Independent simulated worlds (the same ones for every sampler).")
@click.option("--spread", type=FiniteFloat(min=0.0), default=1.0, show_default=True,
              help="Standard deviation of the gold utilities.")
@click.option("--temperature", type=FiniteFloat(min=1e-6), default=1.0, show_default=True,
              help="Annotator noise: the temperature of the Plackett-Luce choice.")
@click.option("--targets", default="0.8,0.9", show_default=True, callback=_targets,
              help="Comma-separated Kendall tau levels to report, each in [-1, 1].")
@click.option("--samplers", default=",".join(SAMPLERS), show_default=True, callback=_samplers,
              help="Comma-separated samplers to compare.")
@click.option("--exploration", type=FiniteFloat(min=0.0), default=1.0, show_default=True,
              help="c of the ucb sampler's bonus c * sigma.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the simulation.")
@output_option("study.json, study.md and study.png (a folder)", file=False, default="arena_study", show_default=True)
@deprecated_option("--out", "legacy_out", "-o/--output", type=click.Path(file_okay=False))
def simulate(n_items, n_annotators, k, budget, repeats, spread, temperature, targets, samplers, exploration, seed,
             output, legacy_out):
    """Active against uniform sampling with simulated annotators: votes needed to reach a rank accuracy."""
    out_dir = resolve_deprecated(output, legacy_out, new="-o/--output", old="--out", new_default="arena_study")
    from .study import print_table, run_study, save_study

    if k > n_items:
        raise click.BadParameter(f"{k} items per vote is more than the {n_items} --items", param_hint="--k")
    try:
        study = run_study(n_items=n_items, n_annotators=n_annotators, k=k, budget=budget, repeats=repeats,
                          spread=spread, temperature=temperature, samplers=samplers, targets=targets, seed=seed,
                          exploration=exploration)
    except MemoryError:
        raise RankalignError(f"out of memory simulating an arena of {n_items} items",
                             hint="use fewer --items: the belief is an items x items matrix") from None
    paths = save_study(study, out_dir)
    print_table(study)
    for path in paths:
        click.echo(f"wrote {path.suffix[1:]}: {path}", err=True)
