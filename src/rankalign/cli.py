"""`rankalign <command>`: a thin command-line layer over the public Python API.

Commands are loaded lazily so that ``rankalign rate`` or ``rankalign data inspect`` never imports torch.
Each subpackage owns its commands in its own ``cli`` module; this file only names them.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import sys

import click

from rankalign.errors import MissingExtraError, RankalignError

# command name -> "module:attribute" of a click command or group
COMMANDS: dict[str, str] = {
    "data": "rankalign.data.cli:data",
    "rate": "rankalign.stats.cli:rate",
    "train": "rankalign.train_cli:train",
    "reward": "rankalign.reward_cli:reward",
    "eval": "rankalign.eval.cli:eval_command",
    "demo": "rankalign.sim.cli:demo",
    "models": "rankalign.engine.models_cli:models",
    "annotators": "rankalign.stats.annotators_cli:annotators",
    "arena": "rankalign.arena.cli:arena",
}

HELP = {
    "data": "Inspect, validate and convert preference data files.",
    "rate": "Fit ratings (Bradley-Terry, Thurstone, Davidson, Rao-Kupper, Plackett-Luce) and print a leaderboard.",
    "train": "Train a policy on ranked lists from a YAML config.",
    "reward": "Train a reward model on a preference file, or score a file with one.",
    "eval": "Evaluate a trained policy on a preference file.",
    "demo": "The whole loop on a simulated world with a known gold reward.",
    "models": "Fetch and list pretrained models (smollm2-135m, .gguf files, the local HF cache).",
    "annotators": "Annotator quality: flip rates, reliability weights and agreement (kappa, alpha).",
    "arena": "Collect pair and K-wise votes in a web arena (init, add-annotator, serve, export, simulate).",
}

# commands whose dependencies come from an extra other than `train`
EXTRA = {"arena": "arena"}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module_name, attribute = COMMANDS[name].split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            missing = error.name or "a dependency"
            if missing.startswith("rankalign"):
                raise
            extra = EXTRA.get(name) or EXTRAS.get(missing.split(".")[0], "train")
            raise MissingExtraError(f"`rankalign {name}` needs {missing}, which is not installed",
                                    hint=f"pip install 'rankalign[{extra}]'") from None
        return getattr(module, attribute)

    def invoke(self, ctx):
        """The one error boundary: every known error becomes ``error: ... (hint: ...)`` on one line."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort):
            raise
        except Exception as error:  # noqa: BLE001 -- the boundary: nothing below may end in a traceback
            if debugging(ctx):
                raise
            message, code = one_line_error(error, ctx)
            click.echo(message, err=True)
            ctx.exit(code)

    def format_commands(self, ctx, formatter):
        rows = [(name, HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


# top-level module of an optional dependency -> the extra that installs it
EXTRAS = {"torch": "train", "transformers": "train", "accelerate": "train", "trl": "train", "peft": "peft",
          "matplotlib": "plot", "pyarrow": "parquet", "datasets": "train", "safetensors": "train"}


def debugging(ctx=None) -> bool:
    """True with ``rankalign --debug`` or ``RANKALIGN_DEBUG=1``: errors keep their traceback."""
    root = ctx.find_root() if ctx is not None else None
    flag = bool(root and root.params.get("debug"))
    return flag or os.environ.get("RANKALIGN_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def _oneline(text) -> str:
    return " ".join(str(text).split())


def one_line_error(error: BaseException, ctx=None) -> tuple[str, int]:
    """``("error: <what> (hint: <how to fix>)", exit code)`` for any exception; 1 = data/files, 2 = usage."""
    hint = None
    code = 1
    if isinstance(error, click.UsageError):
        command = error.ctx.command_path if getattr(error, "ctx", None) is not None else "rankalign"
        message, hint, code = error.format_message(), f"see `{command} --help`", 2
    elif isinstance(error, click.ClickException):
        message, code = error.format_message(), error.exit_code
    elif isinstance(error, RankalignError):
        message, hint, code = str(error), error.hint, error.exit_code
    elif isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] in EXTRAS:
        top = error.name.split(".")[0]
        command = ctx.invoked_subcommand if ctx is not None and ctx.invoked_subcommand else "this command"
        message = f"`rankalign {command}` needs {top}, which is not installed"
        hint = f"pip install 'rankalign[{EXTRAS[top]}]'"
    elif isinstance(error, OSError) and error.errno is None:  # raised with a message of its own
        message = str(error)
    elif isinstance(error, OSError):
        where = error.filename or "a file"
        if error.errno == errno.ENOSPC:
            message, hint = f"no space left on device while writing {where}", "free space or write elsewhere"
        elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            message, hint = f"permission denied: {where}", "check the path's permissions or choose another path"
        elif error.errno == errno.ENOENT:
            message, hint = f"no such file or directory: {where}", "check the path"
        elif error.errno in (errno.EISDIR, errno.ENOTDIR):
            message, hint = f"{error.strerror.lower()}: {where}", "a file and a folder are in each other's way"
        else:
            message = f"{error.strerror or error}: {where}"
    elif isinstance(error, RecursionError):
        message, hint = "input nested too deeply to read", "check the file's structure"
    elif isinstance(error, MemoryError):
        message, hint = "out of memory", _memory_hint(ctx)
    else:
        message = f"unexpected {type(error).__name__}: {error}"
        hint = "rerun with `rankalign --debug ...` (or RANKALIGN_DEBUG=1) for the traceback, and report it"
    line = f"error: {_oneline(message)}"
    if hint:
        line += f" (hint: {_oneline(hint)})"
    return line, code


def _memory_hint(ctx=None) -> str:
    """What the failing command offers to use less memory (only options it has)."""
    names = set()
    command = ctx.command.get_command(ctx, ctx.invoked_subcommand) if ctx and ctx.invoked_subcommand else None
    commands = [command] if not isinstance(command, click.Group) else \
        [command.get_command(ctx, name) for name in command.list_commands(ctx)]  # a group: its commands' options
    for each in commands:
        names |= {param.name for param in getattr(each, "params", [])}
    offers = [text for name, text in (("max_records", "--max-records"), ("batch_size", "--batch-size"),
                                      ("n_boot", "fewer --bootstrap replicates")) if name in names]
    return "use a smaller input" + (f" ({', '.join(offers)})" if offers else "")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rankalign")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error (or set RANKALIGN_DEBUG=1).")
def main(debug):
    """rankalign: learn from human preference feedback, with the ranking as the native unit."""
    _one_line_warnings()
    _library_logs_to_stderr()
    # one progress style, ours: no "Loading weights" / "Writing model shards" bars from transformers (read by
    # huggingface_hub when transformers is first imported; a user's own setting wins)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


# Loggers of libraries that rankalign's commands import indirectly and that write to *stdout* (DeepSpeed
# adds a stdout handler to its "DeepSpeed" logger when transformers or accelerate import it, and warns
# "Setting accelerator to CPU" on a machine without a GPU): their lines would corrupt `--json` output.
STDOUT_LOGGERS = ("DeepSpeed",)


class _ToStderr(logging.Filter):
    """A logger filter that writes each record to stderr and stops it reaching the logger's own handlers."""

    _rankalign = True

    def __init__(self):
        super().__init__()
        self.formatter = logging.Formatter("%(name)s: %(levelname)s: %(message)s")

    def filter(self, record: logging.LogRecord) -> bool:
        print(self.formatter.format(record), file=sys.stderr)
        return False


def _library_logs_to_stderr() -> None:
    """Keep stdout for the command's output: the :data:`STDOUT_LOGGERS` log to stderr instead (once each).

    A filter on the logger itself runs before any handler the library adds later, so this works when
    it runs before the library is imported (the commands import torch and friends lazily).
    """
    for name in STDOUT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(getattr(existing, "_rankalign", False) for existing in logger.filters):
            logger.addFilter(_ToStderr())


def _one_line_warnings() -> None:
    """Print :class:`~rankalign.errors.RankalignWarning` as ``warning: ...`` (no file and line of code)."""
    import warnings

    from rankalign.errors import RankalignWarning

    original = warnings.formatwarning
    if getattr(original, "_rankalign", False):
        return

    def formatwarning(message, category, filename, lineno, line=None):
        if issubclass(category, RankalignWarning):
            return f"warning: {_oneline(message)}\n"
        return original(message, category, filename, lineno, line)

    formatwarning._rankalign = True
    warnings.formatwarning = formatwarning


if __name__ == "__main__":  # pragma: no cover
    main()
