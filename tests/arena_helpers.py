"""Shared helpers of the arena tests: item files, arenas, a uvicorn server in a subprocess, PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROMPTS = ["What is 2+2?", "Name a colour.", "Say hello in French."]
ITEMS = [
    {"id": "model-a", "name": "Model A", "responses": {PROMPTS[0]: "4", PROMPTS[1]: "Blue", PROMPTS[2]: "Bonjour"}},
    {"id": "model-b", "name": "Model <b>B</b>",
     "responses": {PROMPTS[0]: "Four.", PROMPTS[1]: "Red, like a rose.", PROMPTS[2]: "Salut !"}},
    {"id": "model-c", "name": "Model C", "responses": {PROMPTS[0]: "22", PROMPTS[1]: "Green", PROMPTS[2]: "Hello"}},
    {"id": "model-d", "name": "Model D",
     "responses": {PROMPTS[0]: "It is 4.", PROMPTS[1]: "Purple", PROMPTS[2]: "Bonjour à tous"}},
]


def write_items(path, items=ITEMS):
    Path(path).write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return path


def make_arena(url, tmp_path, items=ITEMS, annotators=("alice", "bob"), quotas=None):
    """Migrate, load items, create an admin and annotators; return {name: token} (admin under 'admin')."""
    from rankalign.arena import db
    from rankalign.arena.items import read_items

    engine = db.connect(url)
    db.migrate(engine)
    db.load_items(engine, read_items(write_items(tmp_path / "items.jsonl", items)))
    tokens = {"admin": db.add_annotator(engine, "admin", admin=True)}
    for name in annotators:
        tokens[name] = db.add_annotator(engine, name, quota=(quotas or {}).get(name))
    engine.dispose()
    return tokens


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(method, url, token=None, body=None, timeout=10.0):
    """One HTTP request; returns (status, parsed JSON or text)."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            raw, status, kind = response.read(), response.status, response.headers.get("content-type", "")
    except urllib.error.HTTPError as error:
        raw, status, kind = error.read(), error.code, error.headers.get("content-type", "")
    return status, (json.loads(raw) if kind.startswith("application/json") else raw.decode("utf-8"))


@contextmanager
def server(url, *extra, log=None):
    """``rankalign arena serve`` in a subprocess on 127.0.0.1; yields (base URL, process)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-c", "from rankalign.cli import main; main()", "arena", "serve", "--db", url,
               "--host", "127.0.0.1", "--port", str(port), *extra]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=log if log is not None else subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"arena server exited with {process.returncode}")
            try:
                if request("GET", base + "/api/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("arena server did not start within 60 s")
            time.sleep(0.2)
        yield base, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# ------------------------------------------------------------------------------------------- PostgreSQL
def postgres_bin():
    found = shutil.which("pg_ctl")
    if found:  # the folder the binaries really live in (PATH may hold only symlinks to a few of them)
        folder = Path(found).resolve().parent
        if (folder / "initdb").exists() and (folder / "createdb").exists():
            return folder
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return candidates[-1].parent if candidates else None


def _as_user(command):
    """Run as the unprivileged 'nobody' when we are root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv is missing: cannot start PostgreSQL as an unprivileged user")
    return [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]


@contextmanager
def postgres_server():
    """A throwaway PostgreSQL cluster in a temp folder, listening on a unix socket and 127.0.0.1 only.

    Yields a ``postgresql://`` URL for database ``arena``. Skips when the server binaries are absent.
    """
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    folder = Path(tempfile.mkdtemp(prefix="arena-pg-"))
    data, sockets = folder / "data", folder / "sock"
    sockets.mkdir()
    if os.geteuid() == 0:
        os.chmod(folder, 0o777)
        os.chmod(sockets, 0o777)
    port = free_port()
    try:
        subprocess.run(_as_user([str(bindir / "initdb"), "-D", str(data), "-U", "arena", "--auth=trust",
                                 "-E", "UTF8", "--no-sync"]), check=True, capture_output=True, timeout=120)
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} -c max_connections=200 -c fsync=on"
        subprocess.run(_as_user([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l",
                                 str(folder / "log"), "-w", "-t", "60", "start"]),
                       check=True, capture_output=True, timeout=90)
        subprocess.run(_as_user([str(bindir / "createdb"), "-h", str(sockets), "-p", str(port), "-U", "arena",
                                 "arena"]), check=True, capture_output=True, timeout=60)
        yield f"postgresql://arena@127.0.0.1:{port}/arena"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                           capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
