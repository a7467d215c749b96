"""Package-level promises: layering, light imports, the CLI surface."""

import subprocess
import sys

from click.testing import CliRunner

from rankalign.cli import COMMANDS, main


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_data_and_stats_do_not_import_torch():
    # DESIGN.md: data, stats and eval metrics must be usable without torch/transformers
    for statement in ("import rankalign", "import rankalign.data", "import rankalign.stats"):
        loaded = _modules_after(statement)
        assert "torch" not in loaded, statement
        assert "transformers" not in loaded, statement


def test_cli_lists_every_command():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


def test_every_cli_command_resolves():
    runner = CliRunner()
    for name in COMMANDS:
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
