"""Issue 10, data and stats side: every case that gave a silent wrong result, a traceback or a poor message.

Each test is named after its case. The CLI runs through ``rankalign.cli.main`` (the one error boundary),
so an error must come back as one line ``error: ... (hint: ...)`` with exit code 1 (data) or 2 (usage).
Expected values are derived by hand in the comments (inclusion-exclusion, closed forms), never copied from
the code's output.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from rankalign._escape import for_csv, for_terminal
from rankalign.cli import main
from rankalign.data import DataError, read, read_comparisons
from rankalign.errors import OutputError, UsageError


def rate(*args, **kwargs):
    return CliRunner().invoke(main, ["rate", *(str(a) for a in args)], **kwargs)


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, code):
    """The contract of the boundary: exit code, one line on stderr starting with ``error:``, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------- silent wrong results
def test_repeated_outcome_label_is_an_error(tmp_path):
    data = write(tmp_path / "m.csv", "home,away,result\na,b,1\nb,a,-1\na,b,0\n")
    line = one_line_error(rate(data, "--map", "item_a=home,item_b=away,outcome=result",
                               "--outcomes", "1=a,0=tie,-1=b,1=b"), 2)
    assert "'1' is given twice" in line
    # the same label written another way (1 and 1.0) is the same label
    with pytest.raises(UsageError, match="given twice"):
        read_comparisons(data, mapping="item_a=home,item_b=away,outcome=result", outcomes="1=a,1.0=b,0=tie")


def test_unknown_map_key_is_an_error(tmp_path):
    data = write(tmp_path / "w.csv", "winner,loser,n\na,b,3\nb,a,1\n")
    line = one_line_error(rate(data, "--map", "cont=n"), 2)
    assert "'cont' is not a column" in line and "did you mean 'count'" in line
    # the right side must exist too: a mapping that matches nothing would silently do nothing
    line = one_line_error(rate(data, "--map", "count=nn"), 2)
    assert "has no column 'nn'" in line
    # and the correct mapping uses the counts: a beats b 3 times, b beats a once -> theta_a - theta_b = log 3
    out = rate(data, "--map", "count=n", "--json")
    ratings = {row["item"]: row["rating"] for row in json.loads(out.stdout)["items"]}
    assert ratings["a"] - ratings["b"] == pytest.approx(np.log(3.0), abs=1e-8)


def cycle_csv(tmp_path, times):
    """a > b, b > c, c > a, each ``times`` times (the MLE is all ratings equal)."""
    rows = ["winner,loser"] + ["a,b", "b,c", "c,a"] * times
    return write(tmp_path / "cycle.csv", "\n".join(rows) + "\n")


def test_bootstrap_replicates_without_mle_are_counted_and_excluded(tmp_path):
    from rankalign.stats import bootstrap, fit_bradley_terry

    # 6 comparisons in 3 cells of 2 (ab, bc, ca). A resample draws 6 from the 3 cells with p = 1/3 each; the
    # MLE exists iff every cell is drawn (the win graph must stay a cycle). By inclusion-exclusion
    # P(all drawn) = 1 - 3 (2/3)^6 + 3 (1/3)^6 = 0.7407..., so 25.93% of replicates have no MLE.
    expected_share = 3 * (2 / 3) ** 6 - 3 * (1 / 3) ** 6
    first = np.array([0, 1, 2] * 2)
    second = np.array([1, 2, 0] * 2)
    fit = fit_bradley_terry(first, second, np.ones(6), items=["a", "b", "c"])
    result = bootstrap(fit, 2000, seed=3)
    failed = result.state["bootstrap_failed"]
    assert abs(failed / 2000 - expected_share) < 0.04  # sd of the share is 0.0098
    samples = result.state["bootstrap_samples"]
    assert int(np.isnan(samples).any(axis=1).sum()) == failed
    finite = samples[~np.isnan(samples).any(axis=1), :3]
    assert np.abs(finite).max() < 35  # no replicate where Newton gave up enters the intervals
    # the CLI counts them and says so
    out = rate(cycle_csv(tmp_path, 2), "--bootstrap", 400, "--json")
    assert out.exit_code == 0
    assert "bootstrap replicates have no maximum-likelihood estimate" in out.stderr
    assert "warning:" in out.stderr


def test_bootstrap_with_mostly_separated_replicates_is_an_error(tmp_path):
    # 3 comparisons a>b, b>c, c>a: all three cells are drawn with probability 3!/3^3 = 2/9, so 7/9 of the
    # replicates have no MLE -- too many for an interval
    line = one_line_error(rate(cycle_csv(tmp_path, 1), "--bootstrap", 50), 1)
    assert "have no maximum-likelihood estimate" in line and "hint:" in line


def home_always_wins(tmp_path):
    # every pair plays both ways and the home side (first column) always wins: the ratings are identified
    # (all equal), the home effect is not (its MLE is +infinity)
    rows = ["item_a,item_b,outcome", "a,b,1", "b,a,1", "b,c,1", "c,b,1", "a,c,1", "c,a,1"]
    return write(tmp_path / "home.csv", "\n".join(rows) + "\n")


@pytest.mark.parametrize("model", ["bt", "thurstone"])
def test_home_advantage_not_identified_is_an_error(tmp_path, model):
    line = one_line_error(rate(home_always_wins(tmp_path), "--model", model, "--home-advantage"), 1)
    assert "do not identify the home advantage" in line and "always wins" in line


def test_near_singular_information_names_the_parameter(tmp_path):
    # two identical covariate columns: only their sum is identified (the information matrix is singular)
    rows = ["winner,loser,x,y"] + [f"{w},{lo},{v},{v}" for w, lo, v in
                                   [("a", "b", 1), ("b", "a", -1), ("a", "c", 0.5), ("c", "a", 2), ("b", "c", 1),
                                    ("c", "b", -0.5), ("a", "b", 0), ("b", "c", 0.3)]]
    data = write(tmp_path / "cov.csv", "\n".join(rows) + "\n")
    line = one_line_error(rate(data, "--covariate", "x", "--covariate", "y"), 1)
    assert "covariate weight" in line


@pytest.mark.parametrize("model", ["davidson", "rao-kupper"])
def test_all_tie_data_under_davidson_names_nu(tmp_path, model):
    data = write(tmp_path / "ties.csv", "item_a,item_b,outcome\na,b,0.5\nb,c,0.5\na,c,0.5\nb,a,0.5\n")
    line = one_line_error(rate(data, "--model", model), 1)
    assert "every comparison is a tie" in line
    assert ("nu, the Davidson tie parameter" if model == "davidson" else "Rao-Kupper tie parameter") in line


def test_all_tie_data_under_davidson_luce_names_nu(tmp_path):
    data = write(tmp_path / "ties.csv", "item_a,item_b,outcome\na,b,0.5\nb,c,0.5\na,c,0.5\nb,a,0.5\n")
    line = one_line_error(rate(data, "--model", "pl", "--ties", "davidson-luce"), 1)
    assert "Davidson-Luce tie parameter (nu)" in line


def test_separation_of_an_item_is_named_for_rankings(tmp_path):
    # a is first in every ranking: its rating is +infinity under Plackett-Luce
    data = write(tmp_path / "r.jsonl", '{"ranking": ["a", "b", "c"]}\n{"ranking": ["a", "c", "b"]}\n')
    line = one_line_error(rate(data, "--model", "pl"), 1)
    assert "never lose: a" in line


def test_preflib_alternative_outside_number_alternatives_is_an_error(tmp_path):
    data = write(tmp_path / "e.soc", "# NUMBER ALTERNATIVES: 3\n# NUMBER VOTERS: 2\n1: 1,2,3\n1: 3,2,7\n")
    line = one_line_error(rate(data, "--model", "pl"), 1)
    assert "e.soc:4" in line and "alternative '7' is outside 1..3" in line
    # skipped and counted under --skip-invalid
    result = read(data, skip_invalid=True)
    assert dict(result.report.skipped) == {"unknown_alternative": 1}


# ---------------------------------------------------------------------------------- tracebacks
def test_bootstrap_1_is_a_usage_error(tmp_path):
    assert "at least 2" in one_line_error(rate(cycle_csv(tmp_path, 2), "--bootstrap", 1), 2)


def test_huge_prior_is_a_usage_error(tmp_path):
    assert "--prior" in one_line_error(rate(cycle_csv(tmp_path, 2), "--prior", "1e308"), 2)


def test_csv_to_an_unwritable_place_is_a_one_line_error(tmp_path):
    blocker = write(tmp_path / "file", "x")
    line = one_line_error(rate(cycle_csv(tmp_path, 2), "--csv", blocker / "out.csv"), 1)
    assert str(blocker / "out.csv") in line


def test_full_disk_names_the_file(tmp_path, monkeypatch):
    from rankalign import _atomic

    def full(handle):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=r"no space left on device while writing .*out\.bin"):
        _atomic.atomic_write(tmp_path / "out.bin", full, binary=True)
    # a C++ writer only says "basic_ios::clear"; with the disk full the message still names the file
    monkeypatch.setattr(_atomic, "_disk_full", lambda directory: True)

    def cpp(path):
        raise RuntimeError("basic_ios::clear: iostream error")

    with pytest.raises(OutputError, match=r"no space left on device while writing .*w\.safetensors"):
        _atomic.atomic_write_path(tmp_path / "w.safetensors", cpp)
    assert os.listdir(tmp_path) == []  # no temporary left behind
    # safetensors raises its own exception type; the Trainer's checkpoint folders are written through writing()

    class SafetensorError(Exception):
        pass

    monkeypatch.setattr(_atomic, "_disk_full", lambda directory: False)
    with pytest.raises(OutputError, match=r"no space left on device while writing .*checkpoint-3"):
        with _atomic.writing(tmp_path / "checkpoint-3"):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def test_item_names_are_escaped_on_the_terminal(tmp_path):
    data = write(tmp_path / "evil.csv", "winner,loser\n[/],\x1b[31mred\n\x1b[31mred,[bold]x\n[bold]x,[/]\n")
    out = rate(data)
    assert out.exit_code == 0, out.output
    assert "\x1b" not in out.stdout  # the escape is shown, not executed
    assert "\\x1b[31mred" in out.stdout and "[/]" in out.stdout and "[bold]x" in out.stdout


def test_csv_formula_injection_is_escaped(tmp_path):
    data = write(tmp_path / "f.csv", 'winner,loser\n"=HYPERLINK(""http://x"")",+b\n+b,@c\n@c,"=HYPERLINK(""http://x"")"\n')
    target = tmp_path / "out.csv"
    assert rate(data, "--csv", target).exit_code == 0
    with open(target, newline="") as handle:
        items = {row["item"] for row in csv.DictReader(handle)}
    assert items == {"'=HYPERLINK(\"http://x\")", "'+b", "'@c"}


def test_escaping_functions():
    # rich markup made literal, control characters made visible; CSV cells that a spreadsheet would run
    assert for_terminal("[/]") == "\\[/]"
    assert for_terminal("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert for_terminal("\u202eevil") == "\\u202eevil"
    assert [for_csv(v) for v in ("=1+1", "-x", "\tx", "\rx", "ok", -1.5)] == ["'=1+1", "'-x", "'\tx", "'\rx", "ok", -1.5]


def deep_jsonl(tmp_path):
    good = '{"winner": "a", "loser": "b"}\n{"winner": "b", "loser": "a"}\n'
    deep = '{"winner": ' + "[" * 100_000 + "]" * 100_000 + ', "loser": "a"}\n'
    return write(tmp_path / "deep.jsonl", good + deep)


def test_jsonl_nested_100000_deep_is_a_counted_skip_or_one_line_error(tmp_path):
    data = deep_jsonl(tmp_path)
    line = one_line_error(rate(data), 1)
    assert "deep.jsonl:3" in line and "nested too deeply" in line
    result = read(data, skip_invalid=True)
    assert len(result) == 2 and dict(result.report.skipped) == {"too_deep": 1}
    assert rate(data, "--skip-invalid").exit_code == 0


def test_base_install_without_extras_names_the_extra(tmp_path):
    """A subprocess where torch, matplotlib and pyarrow cannot be imported (as on a base install)."""
    data = cycle_csv(tmp_path, 2)
    parquet = tmp_path / "x.parquet"
    parquet.write_bytes(b"PAR1")
    config = write(tmp_path / "c.yaml", "model: tiny:llama\ndata: x.jsonl\n")
    script = textwrap.dedent(f"""
        import sys
        for name in ("torch", "matplotlib", "pyarrow", "transformers"):
            sys.modules[name] = None
        from click.testing import CliRunner
        from rankalign.cli import main
        for args in (["train", {str(config)!r}], ["rate", {str(data)!r}, "--plot", {str(tmp_path / 'p.png')!r}],
                     ["data", "inspect", {str(parquet)!r}]):
            result = CliRunner().invoke(main, args)
            print(result.exit_code, result.stderr.strip())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3, out.stdout + out.stderr
    assert lines[0].startswith("1 error:") and "pip install 'rankalign[train]'" in lines[0]
    assert lines[1].startswith("1 error:") and "pip install 'rankalign[plot]'" in lines[1]
    assert lines[2].startswith("1 error:") and "pip install 'rankalign[parquet]'" in lines[2]


def test_debug_flag_and_env_show_the_traceback(tmp_path, monkeypatch):
    data = write(tmp_path / "one.csv", "winner,loser\na,b\n")
    assert one_line_error(rate(data), 1)
    result = CliRunner().invoke(main, ["--debug", "rate", str(data)])
    assert isinstance(result.exception, DataError)  # re-raised for the traceback
    monkeypatch.setenv("RANKALIGN_DEBUG", "1")
    assert isinstance(rate(data).exception, DataError)


def test_unexpected_error_is_one_line_with_a_hint(tmp_path, monkeypatch):
    from rankalign.stats import cli as stats_cli

    def boom(*args, **kwargs):
        raise TypeError("something nobody expected")

    monkeypatch.setattr(stats_cli, "fit_file", boom)
    line = one_line_error(rate(cycle_csv(tmp_path, 2)), 1)
    assert "unexpected TypeError" in line and "--debug" in line


# ---------------------------------------------------------------------------------- poor messages
def test_jsonl_with_bom_is_accepted(tmp_path):
    data = tmp_path / "bom.jsonl"
    data.write_bytes(b'\xef\xbb\xbf{"winner": "a", "loser": "b"}\n{"winner": "b", "loser": "a"}\n')
    assert [r.candidates for r in read(data).records] == [("a", "b"), ("b", "a")]
    assert rate(data).exit_code == 0


def test_all_rows_skipped_reports_the_skip_counts(tmp_path):
    data = write(tmp_path / "bad.csv", "winner,loser\na,a\nb,b\n")
    line = one_line_error(rate(data, "--skip-invalid"), 1)
    assert "after skipping 2 invalid rows" in line and "self_comparison" in line


def test_one_candidate_lists_name_the_file(tmp_path):
    data = write(tmp_path / "one.jsonl", '{"ranking": ["a"]}\n{"ranking": ["b"]}\n')
    line = one_line_error(rate(data), 1)
    assert str(data) in line


def test_rate_on_prompt_response_pairs_says_use_map(tmp_path):
    data = write(tmp_path / "pairs.jsonl", '{"prompt": "p", "chosen": "x", "rejected": "y"}\n')
    line = one_line_error(rate(data), 1)
    assert "this file has no item ids" in line and "--map" in line


def test_sigterm_leaves_no_hidden_tmp(tmp_path):
    """A process killed by SIGTERM in the middle of an atomic write leaves neither a partial target nor
    a hidden ``.name.*.tmp`` file."""
    target = tmp_path / "out.txt"
    ready = tmp_path / "ready"
    script = textwrap.dedent(f"""
        import time
        from rankalign._atomic import atomic_write
        def slow(handle):
            handle.write("partial")
            handle.flush()
            open({str(ready)!r}, "w").close()
            time.sleep(60)
        atomic_write({str(target)!r}, slow)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    for _ in range(600):
        if ready.exists():
            break
        if process.poll() is not None:
            break
        import time

        time.sleep(0.05)
    assert ready.exists(), "the writer did not start"
    assert any(name.startswith(".out.txt.") for name in os.listdir(tmp_path))  # the temporary exists now
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == -signal.SIGTERM  # still ends as SIGTERM would
    assert sorted(os.listdir(tmp_path)) == ["ready"]


def test_eval_errors_reach_the_boundary_with_their_hint(tmp_path):
    """`rankalign eval` on a folder that is not a training run, and on a bad data file: the boundary's one
    line (exit 1, no traceback), naming the folder, and the file and line."""
    not_a_run = tmp_path / "not_a_run"
    not_a_run.mkdir()
    data = write(tmp_path / "pairs.jsonl", '{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    line = one_line_error(cli("eval", "--run", not_a_run, "--data", data), 1)
    assert "run_source.json" in line and str(not_a_run) in line
    bad = write(tmp_path / "bad.jsonl", '{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": \n')
    line = one_line_error(cli("eval", "--policy", "tiny:llama", "--data", bad), 1)
    assert "bad.jsonl:2:" in line and "malformed JSON" in line
