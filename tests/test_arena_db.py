"""Arena storage: Alembic migrations match the schema (SQLite and PostgreSQL), durability settings, hashed
tokens, the items file's errors, the init/add-annotator commands, and annotator agreement by hand."""

import hashlib
import json
from types import SimpleNamespace

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")

from click.testing import CliRunner  # noqa: E402

from arena_helpers import ITEMS, make_arena, postgres_server, write_items  # noqa: E402
from rankalign.arena import db  # noqa: E402
from rankalign.arena.items import read_items  # noqa: E402
from rankalign.arena.records import agreement  # noqa: E402
from rankalign.cli import main  # noqa: E402
from rankalign.data import DataError  # noqa: E402


def _schema_differences(url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = db.connect(url)
    db.migrate(engine)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), db.metadata)
        version = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one()
    engine.dispose()
    return differences, version


def test_migrations_build_the_declared_schema_sqlite(tmp_path):
    differences, version = _schema_differences(f"sqlite:///{tmp_path / 'a.db'}")
    assert differences == [] and version == "0001"
    # running the migrations again is a no-op
    assert _schema_differences(f"sqlite:///{tmp_path / 'a.db'}") == ([], "0001")


def test_migrations_build_the_declared_schema_postgresql(tmp_path):
    with postgres_server() as url:
        differences, version = _schema_differences(url)
    assert differences == [] and version == "0001"


def test_sqlite_durability_settings(tmp_path):
    engine = db.connect(str(tmp_path / "a.db"))  # a plain path means SQLite
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar_one() == 2  # FULL
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1


def test_url_normalisation():
    assert db.normalise_url("postgresql://u@127.0.0.1:5432/x") == "postgresql+psycopg://u@127.0.0.1:5432/x"
    assert db.normalise_url("sqlite:///a.db") == "sqlite:///a.db"
    assert db.normalise_url("/tmp/a.db") == "sqlite:////tmp/a.db"


def test_tokens_are_stored_hashed(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    tokens = make_arena(url, tmp_path)
    engine = db.connect(url)
    with engine.connect() as connection:
        stored = dict(connection.exec_driver_sql("SELECT name, token_hash FROM annotators").all())
    for name, token in tokens.items():
        assert stored[name] == hashlib.sha256(token.encode()).hexdigest()
        assert db.find_annotator(engine, token).name == name
    engine.dispose()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("a.db*"))
    assert not any(token.encode() in raw for token in tokens.values())
    assert db.find_annotator(db.connect(url), tokens["alice"] + "x") is None


@pytest.mark.parametrize("lines, where", [
    ([{"id": "a", "name": "A"}, {"id": "b"}], ":2: field 'name': missing"),
    ([{"id": "a", "name": "A"}, {"id": "a", "name": "B"}], ":2: field 'id': duplicate id 'a' (first on line 1)"),
    ([{"id": "a b", "name": "A"}, {"id": "b", "name": "B"}], ":1: field 'id'"),
    ([{"id": "a", "name": "A", "responses": {"p": ""}}, {"id": "b", "name": "B"}], ":1: field 'responses[0].response'"),
    ([{"id": "a", "name": "A", "colour": 1}, {"id": "b", "name": "B"}], ":1: field 'colour': unknown field"),
    ([{"id": "a", "name": "A"}], "at least two items"),
])
def test_items_file_errors_name_line_and_field(tmp_path, lines, where):
    path = write_items(tmp_path / "items.jsonl", lines)
    with pytest.raises(DataError) as error:
        read_items(path)
    assert where in str(error.value) and str(path) in str(error.value)


def test_items_file_malformed_json(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text('{"id": "a", "name": "A"}\n{"id": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"items.jsonl:2: malformed JSON"):
        read_items(path)


def test_init_and_add_annotator_commands(tmp_path):
    items = write_items(tmp_path / "items.jsonl")
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    runner = CliRunner()
    init = runner.invoke(main, ["arena", "init", "--db", url, "--items", str(items)])
    assert init.exit_code == 0, init.output
    assert "4 items, 3 prompts, 12 responses" in init.output
    admin_token = init.output.strip().splitlines()[-1]
    added = runner.invoke(main, ["arena", "add-annotator", "carol", "--db", url, "--quota", "5"])
    assert added.exit_code == 0
    token = added.output.strip().splitlines()[-1]
    engine = db.connect(url)
    assert db.find_annotator(engine, admin_token).is_admin
    carol = db.find_annotator(engine, token)
    assert carol.name == "carol" and carol.quota == 5 and not carol.is_admin
    again = runner.invoke(main, ["arena", "init", "--db", url, "--items", str(items)])
    assert again.exit_code != 0 and "already has items" in again.output
    twice = runner.invoke(main, ["arena", "add-annotator", "carol", "--db", url])
    assert twice.exit_code != 0 and "already exists" in twice.output
    bad = write_items(tmp_path / "bad.jsonl", [ITEMS[0], {"id": "x"}])
    failed = runner.invoke(main, ["arena", "init", "--db", f"sqlite:///{tmp_path / 'b.db'}", "--items", str(bad)])
    assert failed.exit_code != 0 and "bad.jsonl:2: field 'name': missing" in failed.output


def test_agreement_by_hand():
    def row(annotator, candidates, ranks, prompt=None):
        return SimpleNamespace(annotator=annotator, candidates=candidates, ranks=ranks, prompt_id=prompt)

    rows = [row("alice", ["a", "b"], [0, 1]), row("bob", ["b", "a"], [1, 0]), row("carol", ["a", "b"], [1, 0]),
            row("alice", ["a", "b"], [0, 0]),  # alice again, a tie: compared with bob and carol only
            row("dave", ["a", "b"], [0, 1], prompt=7)]  # another question: nobody to compare with
    # judgment pairs on (None, a, b): alice1-bob agree, alice1-carol, bob-carol, alice2-bob, alice2-carol differ
    assert agreement(rows) == {"agreement": 1 / 5, "judgment_pairs": 5, "questions": 1}
    three = [row("x", ["a", "b", "c"], [0, 1, 2]), row("y", ["c", "b", "a"], [0, 1, 1])]
    # (a,b): x a>b, y tie -> differ; (a,c): x a>c, y c>a -> differ; (b,c): x b>c, y c>b -> differ
    assert agreement(three) == {"agreement": 0.0, "judgment_pairs": 3, "questions": 3}
    assert agreement([])["agreement"] is None


def test_export_json_is_plain_records(tmp_path):
    from rankalign.arena.records import vote_records

    url = f"sqlite:///{tmp_path / 'a.db'}"
    make_arena(url, tmp_path)
    engine = db.connect(url)
    alice = db.find_annotator(engine, make_arena_token(engine, "erin"))
    db.insert_vote(engine, alice.id, None, {"request_id": "r", "candidates": ["model-a", "model-b"],
                                            "ranks": [0, 0], "prompt_id": None, "comment": None})
    records, dropped = vote_records(engine)
    assert json.loads(json.dumps(records[0].to_dict()))["ranks"] == [0, 0] and not dropped


def make_arena_token(engine, name):
    return db.add_annotator(engine, name)


def test_arena_imports_only_data_and_stats():
    """The app sits on data and stats: importing it loads no torch and no training layer."""
    import subprocess
    import sys

    code = "import sys, rankalign.arena, rankalign.arena.cli; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                text=True).stdout.split())
    assert "torch" not in loaded and "transformers" not in loaded
    ours = {name.split(".")[1] for name in loaded if name.startswith("rankalign.") and name.count(".") >= 1}
    # errors and _cli: the base error types and the click conventions, below every subpackage; _mkl_avx2: what
    # `import rankalign` does first (no torch: it only loads a C library on AMD CPUs)
    assert ours <= {"arena", "data", "stats", "_atomic", "errors", "_cli", "_mkl_avx2"}, ours
