"""`rankalign arena` commands on bad input: every mistake is one `error: ...` line with exit code 1 (the
database, the port) or 2 (the options), nothing is created by mistake and the database is never overwritten."""

import hashlib
import socket

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("uvicorn")

from click.testing import CliRunner  # noqa: E402

from arena_helpers import free_port, make_arena, server, write_items  # noqa: E402
from rankalign.arena import db  # noqa: E402
from rankalign.cli import main  # noqa: E402


def run(*args):
    return CliRunner().invoke(main, ["arena", *args])


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def items(tmp_path):
    return str(write_items(tmp_path / "items.jsonl"))


COMMANDS = {  # each command that opens an existing database, with what it needs besides --db
    "add-annotator": ["add-annotator", "erin"],
    "export": ["export", "-o", "votes.jsonl"],
    "serve": ["serve", "--port", "0"],
}


@pytest.mark.parametrize("command", ["init", *COMMANDS])
def test_a_file_that_is_not_a_database_is_one_error_line(tmp_path, items, command):
    path = tmp_path / "notdb.jsonl"
    path.write_text('{"a": 1}\n', encoding="utf-8")
    args = ["init", "--items", items] if command == "init" else COMMANDS[command]
    result = run(*args, "--db", str(path))
    assert result.exit_code == 1, result.output
    assert f"error: cannot open the database {path}: file is not a database" in result.output
    assert "unexpected" not in result.output and "Traceback" not in result.output
    assert path.read_text(encoding="utf-8") == '{"a": 1}\n'


@pytest.mark.parametrize("url, cause", [
    ("mysql://user@127.0.0.1/arena", "its driver MySQLdb is not installed"),
    ("sqlite:////nonexistent_dir/x.db", "the folder /nonexistent_dir does not exist"),
    ("FOLDER", "is a folder, not a SQLite file"),
    ("postgresql://user:secret@127.0.0.1:PORT/arena", "Connection refused"),
])
def test_unreachable_databases_are_one_error_line(tmp_path, items, url, cause):
    url = url.replace("FOLDER", str(tmp_path)).replace("PORT", str(free_port()))
    result = run("init", "--items", items, "--db", url)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and cause in result.output
    assert "unexpected" not in result.output and "secret" not in result.output  # the password stays hidden


@pytest.mark.parametrize("command", COMMANDS)
def test_only_init_creates_a_database(tmp_path, command, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "typo.db"
    result = run(*COMMANDS[command], "--db", str(missing))
    assert result.exit_code == 1, result.output
    assert f"no arena database at {missing}" in result.output and "rankalign arena init" in result.output
    assert not missing.exists() and not (tmp_path / "votes.jsonl").exists()
    # an existing SQLite file without the arena's tables is refused too, and left as it was
    empty = tmp_path / "empty.db"
    empty.touch()
    refused = run(*COMMANDS[command], "--db", f"sqlite:///{empty}")
    assert refused.exit_code == 1 and "is not an arena database" in refused.output, refused.output
    assert "rankalign arena init" in refused.output and empty.stat().st_size == 0


def test_init_then_the_others_work(tmp_path, items):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    assert run("init", "--items", items, "--db", url).exit_code == 0
    assert run("add-annotator", "erin", "--db", url).exit_code == 0
    exported = run("export", "--db", url, "-o", str(tmp_path / "votes.jsonl"))
    assert exported.exit_code == 0 and "wrote 0 records" in exported.output


def test_export_refuses_to_overwrite_the_database(tmp_path):
    path = tmp_path / "arena.json"
    tokens = make_arena(str(path), tmp_path)
    before = digest(path)
    result = run("export", "--db", str(path), "-o", str(path))
    assert result.exit_code == 2 and "is the input file" in result.output, result.output
    assert digest(path) == before
    assert db.find_annotator(db.connect(str(path)), tokens["alice"]).name == "alice"


def test_export_names_the_extensions_it_writes(tmp_path):
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    make_arena(url, tmp_path)
    result = run("export", "--db", url, "-o", str(tmp_path / "votes.txt"))
    assert result.exit_code == 2, result.output
    assert ".jsonl, .json, .csv or .parquet" in result.output and "format=" not in result.output
    assert not (tmp_path / "votes.txt").exists()


def test_quota_is_bounded(tmp_path):
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    make_arena(url, tmp_path)
    result = run("add-annotator", "q", "--db", url, "--quota", "99999999999999999999999")
    assert result.exit_code == 2 and "--quota" in result.output and "unexpected" not in result.output
    assert run("add-annotator", "q", "--db", url, "--quota", str(db.MAX_QUOTA + 1)).exit_code == 2
    assert run("add-annotator", "q", "--db", url, "--quota", str(db.MAX_QUOTA)).exit_code == 0
    with pytest.raises(ValueError, match="quota"):
        db.add_annotator(db.connect(url), "r", quota=db.MAX_QUOTA + 1)


@pytest.mark.parametrize("args, option", [
    (["--targets", "abc"], "--targets"),
    (["--targets", ""], "--targets"),
    (["--targets", "1.5,-2"], "--targets"),
    (["--targets", "nan"], "--targets"),
    (["--targets", "0.8,0.8"], "--targets"),
    (["--samplers", ""], "--samplers"),
    (["--samplers", "info,info"], "--samplers"),
    (["--samplers", "info,best"], "--samplers"),
    (["--k", "8", "--items", "4"], "--k"),
    (["--seed", "-1"], "--seed"),
])
def test_simulate_options_are_usage_errors(tmp_path, args, option):
    out = tmp_path / "study"
    result = run("simulate", "--votes", "10", "--repeats", "1", "-o", str(out), *args)
    assert result.exit_code == 2, result.output
    assert option in result.output and "unexpected" not in result.output
    assert not out.exists()


def test_simulate_out_of_memory_hint_fits_simulate(tmp_path, monkeypatch):
    from rankalign.arena import study

    def run_study(**_):
        raise MemoryError

    monkeypatch.setattr(study, "run_study", run_study)
    result = run("simulate", "--items", "100000", "-o", str(tmp_path / "study"))
    assert result.exit_code == 1 and "out of memory" in result.output, result.output
    assert "--items" in result.output and "--max-records" not in result.output


def test_serve_on_a_port_in_use_is_one_error_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    make_arena(url, tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--db", url, "--port", str(port))
    assert result.exit_code == 1, result.output
    assert f"error: cannot listen on 127.0.0.1 port {port}" in result.output and "in use" in result.output


def test_serve_says_where_it_serves(tmp_path):
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    make_arena(url, tmp_path)
    log = tmp_path / "serve.log"
    with open(log, "w", encoding="utf-8") as handle, server(url, log=handle) as (base, process):
        pass
    lines = log.read_text(encoding="utf-8").splitlines()
    assert lines == [f"serving the arena at {base}/ (Ctrl-C stops it)"]
    assert process.returncode == 0  # stopped by SIGINT (Ctrl-C), cleanly
