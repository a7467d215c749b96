"""`rankalign <command>`: a thin command-line layer over the public Python API.

Commands are loaded lazily so that ``rankalign rate`` or ``rankalign data inspect`` never imports torch.
Each subpackage owns its commands in its own ``cli`` module; this file only names them.
"""

from __future__ import annotations

import importlib

import click

# command name -> "module:attribute" of a click command or group
COMMANDS: dict[str, str] = {
    "data": "rankalign.data.cli:data",
    "rate": "rankalign.stats.cli:rate",
    "train": "rankalign.train.cli:train",
    "reward": "rankalign.reward.cli:reward",
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
            extra = EXTRA.get(name, "train")
            raise click.ClickException(
                f"`rankalign {name}` needs {missing}, which is not installed. "
                f"Install the {extra} extra: pip install 'rankalign[{extra}]'") from None
        return getattr(module, attribute)

    def format_commands(self, ctx, formatter):
        rows = [(name, HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rankalign")
def main():
    """rankalign: learn from human preference feedback, with the ranking as the native unit."""


if __name__ == "__main__":  # pragma: no cover
    main()
