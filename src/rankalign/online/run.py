"""``rankalign train`` with an ``online:`` section: load model, tokenizer, prompts and judge, run the loop."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from ..train.config import ConfigError, TrainConfig, save_config
from .loop import STATE_FILE, Judge, OnlineResult, run_online


def load_judge(spec: str, options: dict | None = None):
    """``"module:attribute"``: a judge object, or a function (or class) called with ``options`` to make one."""
    if not spec or ":" not in spec:
        raise ConfigError(f"online.judge: expected 'module:attribute' (e.g. 'rankalign.sim.text_world:gold_judge'), "
                          f"got {spec!r}")
    module_name, attribute = spec.split(":", 1)
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"online.judge: cannot load {spec!r} ({error})") from None
    judge = target if isinstance(target, Judge) else target(**(options or {}))
    if not isinstance(judge, Judge):
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
    if not config.online.judge:
        raise ConfigError("online.judge: required (a 'module:attribute' judge)")
    output_dir = Path(config.output_dir)
    if not resume and (output_dir / STATE_FILE).exists():
        raise ConfigError(f"{output_dir} holds an online run; use another output_dir (or resume it)")
    records = read_records(config)
    prompts = prompts_of(records)
    if not prompts:
        raise ConfigError(f"{config.data}: no prompts in the data (the online loop samples for each prompt)")
    tokenizer = load_tokenizer(config, records)
    model = load_model(config.model, tokenizer, config)
    ref_model = load_model(config.reference_model, tokenizer, config) if config.reference_model else None
    judge = load_judge(config.online.judge, config.online.judge_options)
    save_config(config, output_dir)
    result = run_online(model, tokenizer, prompts, judge, config, config.online, ref_model=ref_model)
    final_dir = output_dir / "final"
    result.model.save_pretrained(final_dir)
    tokenizer.save_pretrained(final_dir)
    save_config(config, final_dir)
    return result


__all__ = ["run_online_config", "load_judge", "prompts_of"]
