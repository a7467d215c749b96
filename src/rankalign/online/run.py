"""``rankalign train`` with an ``online:`` section: load model, tokenizer, prompts and judge, run the loop."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from ..train.config import ConfigError, TrainConfig, save_config
from .loop import STATE_FILE, Judge, OnlineResult, check_online, online_fingerprint, resume_state, run_online


def load_judge(spec: str, options: dict | None = None):
    """``"module:attribute"``: a judge object, or a function or class called with ``options`` to make one.

    A class is always a factory, even one whose instances are judges (a class has the ``id`` and ``rank`` a
    judge has, but ``rank`` needs an instance): ``rankalign.sim.text_world:GoldJudge`` is instantiated with
    ``judge_options``. Every failure -- the module cannot be imported (whatever it raises), the attribute
    is missing, neither a judge nor callable, the factory raises or gives something that is not a judge --
    is a :class:`~rankalign.train.config.ConfigError` naming the spec and the cause.
    """
    if not isinstance(spec, str) or ":" not in spec or not all(spec.split(":", 1)):
        raise ConfigError(f"online.judge: expected 'module:attribute' (e.g. 'rankalign.sim.text_world:gold_judge'), "
                          f"got {spec!r}")
    module_name, attribute = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"online.judge: cannot load {spec!r} ({error})") from None
    except Exception as error:  # the module itself fails: SyntaxError, ZeroDivisionError ...
        raise ConfigError(f"online.judge: importing {module_name!r} for {spec!r} failed "
                          f"({type(error).__name__}: {error})") from None
    try:
        target = getattr(module, attribute)
    except AttributeError as error:
        raise ConfigError(f"online.judge: cannot load {spec!r} ({error})") from None
    if isinstance(target, Judge) and not isinstance(target, type):
        return target
    if not callable(target):
        raise ConfigError(f"online.judge: {spec!r} is a {type(target).__name__}, neither a judge (an `id` and "
                          "`rank(prompt, candidates)`) nor a function or class that makes one")
    try:
        judge = target(**(options or {}))
    except Exception as error:
        raise ConfigError(f"online.judge: calling {spec!r} with judge_options {options or {}} failed "
                          f"({type(error).__name__}: {error})") from None
    if isinstance(judge, type) or not isinstance(judge, Judge):
        raise ConfigError(f"online.judge: {spec!r} gave a {type(judge).__name__}, which has no `id` and "
                          "`rank(prompt, candidates)`")
    return judge


def prompts_of(records) -> list:
    """The distinct prompts of the records, in first-seen order (chat prompts compared by content)."""
    seen, prompts = set(), []
    for record in records:
        prompt = record.prompt
        key = prompt if isinstance(prompt, str) else repr(prompt)
        if prompt is not None and key not in seen:
            seen.add(key)
            prompts.append(prompt)
    return prompts


def run_online_config(config: TrainConfig, *, resume: bool = True) -> OnlineResult:
    """Run the online loop a config describes; the final policy goes to ``output_dir/final``."""
    from ..train.run import load_model, load_tokenizer, read_records

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.set_seed(config.seed)
    check_online(config.online)
    if not config.online.judge:
        raise ConfigError("online.judge: required (a 'module:attribute' judge)")
    output_dir = Path(config.output_dir)
    if not resume and (output_dir / STATE_FILE).exists():
        raise ConfigError(f"{output_dir} holds an online run; use another output_dir (or resume it)")
    judge = load_judge(config.online.judge, config.online.judge_options)  # a bad spec fails before any model loads
    records = read_records(config)
    prompts = prompts_of(records)
    if not prompts:
        raise ConfigError(f"{config.data}: no prompts in the data (the online loop samples for each prompt)")
    tokenizer = load_tokenizer(config, records)
    model = load_model(config.model, tokenizer, config)
    ref_model = load_model(config.reference_model, tokenizer, config) if config.reference_model else None
    # a run of other settings in output_dir is refused before its train_config.yaml is written over
    resume_state(output_dir, online_fingerprint(config, config.online, prompts, judge, model))
    save_config(config, output_dir)
    result = run_online(model, tokenizer, prompts, judge, config, config.online, ref_model=ref_model)
    final_dir = output_dir / "final"
    result.model.save_pretrained(final_dir)
    tokenizer.save_pretrained(final_dir)
    save_config(config, final_dir)
    return result


__all__ = ["run_online_config", "load_judge", "prompts_of"]
