"""Checkpoints that prove which run they belong to, and the one rule for which checkpoint a resume uses.

A checkpoint folder is trusted only when

* it carries the completion marker (:data:`CHECKPOINT_MARKER`, written after the Trainer saved all of it),
* the marker holds the run's **fingerprint** (:func:`run_fingerprint`): a hash of the resolved training
  config without the fields that may change on resume (:data:`RESUME_MAY_CHANGE`: where and how often to
  save and log, how long to train), a digest of the training data as it was tokenized, and the model
  source; and
* every file in it is whole (:func:`checkpoint_problem`: safetensors headers and sizes, the zip
  directories of torch's ``.pt``/``.pth``/``.bin`` files, the JSON files).

:func:`select_checkpoint` applies that rule for the CLI, :func:`~rankalign.train.train_preference` and
``PreferenceTrainer.train(resume_from_checkpoint=True)`` alike: a damaged checkpoint is skipped with a
warning naming the bad file (the previous complete one is used), and a checkpoint whose fingerprint
differs from this run's, or that has none, is refused with a :class:`ResumeError` -- resuming it would mix
two runs. A run whose ``final/`` folder is marked finished (:data:`FINISHED_MARKER`) is not trained again
unless asked to go further (:func:`finished_note`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

from rankalign._atomic import atomic_write_json
from rankalign._safetensors import safetensors_problem as _safetensors_problem
from rankalign.errors import RankalignWarning, UsageError

CHECKPOINT_MARKER = "rankalign_checkpoint_complete"
FINISHED_MARKER = "rankalign_run_finished.json"

#: Config keys that may change between a run and its resumption: where and how often it saves and logs,
#: how it is shown, and how long it trains (raising max_steps or epochs extends a run). Every other key
#: is part of the fingerprint.
RESUME_MAY_CHANGE = frozenset({"output_dir", "progress", "resume", "report_to", "logging_steps", "save_steps",
                               "save_total_limit", "max_steps", "epochs", "reference_cache_dir",
                               "precompute_reference"})


class ResumeError(UsageError):
    """A checkpoint that does not belong to this run (or cannot be shown to)."""


# ------------------------------------------------------------------------------------------ fingerprint
def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False, separators=(",", ":"))


def data_digest(records) -> dict[str, Any]:
    """``{"records": n, "sha256": ...}`` of the training records (``to_dict`` of each record, or the fields
    of a tokenized list), so a changed data file -- or a different list passed to the Python API -- is seen."""
    digest = hashlib.sha256()
    count = 0
    for record in records:
        if hasattr(record, "to_dict"):
            value = record.to_dict()
        elif dataclasses.is_dataclass(record):
            value = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
        else:
            value = record
        digest.update(_canonical(value).encode())
        digest.update(b"\n")
        count += 1
    return {"records": count, "sha256": digest.hexdigest()}


def weights_digest(model) -> str:
    """SHA-256 of a model's parameters and buffers (names, dtypes, shapes and bytes): a fingerprint part for
    runs whose starting weights matter on resume (the policy-gradient loop's reference is its initial model)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_source(model=None, spec: str | None = None) -> dict[str, Any]:
    """Where the policy came from: the config's spec (a local folder resolved to its absolute path) and,
    for a model object, its class, ``name_or_path`` and parameter count."""
    out: dict[str, Any] = {}
    if spec:
        out["spec"] = spec
        if not spec.startswith("tiny:") and os.path.isdir(spec):
            out["path"] = os.path.abspath(spec)
    if model is not None:
        base = getattr(model, "base_model", None) if hasattr(model, "peft_config") else None
        config = getattr(base or model, "config", None)
        out["class"] = type(model).__name__
        out["name_or_path"] = getattr(config, "_name_or_path", None) or None
        try:
            out["parameters"] = int(sum(p.numel() for p in model.parameters()))
        except (AttributeError, TypeError):
            pass
    return out


# (section, key, default) of options added after runs were checkpointed
ADDED_LATER = (("peft", "top_layers", None), ("online", "replay", False), ("online", "backend", "transformers"),
               ("online", "vllm_options", {}))


def run_fingerprint(settings: dict[str, Any], records, model=None, model_spec: str | None = None) -> dict[str, Any]:
    """The fingerprint a checkpoint carries: ``{"hash", "config", "data", "model"}``.

    ``settings`` is the resolved config as a mapping (``config_to_dict``); keys in
    :data:`RESUME_MAY_CHANGE` are left out. ``hash`` is the SHA-256 of the other three parts.
    """
    kept = {k: v for k, v in settings.items() if k not in RESUME_MAY_CHANGE}
    # an option added later is left out while at its default, so a run checkpointed before it existed resumes
    for section, key, default in ADDED_LATER:
        if isinstance(kept.get(section), dict) and key in kept[section] and kept[section][key] == default:
            kept[section] = {k: v for k, v in kept[section].items() if k != key}
    parts = {"config": kept, "data": data_digest(records), "model": model_source(model, model_spec)}
    return {"hash": hashlib.sha256(_canonical(parts).encode()).hexdigest(), **parts}


def describe_difference(saved: dict, current: dict) -> str:
    """What differs between two fingerprints, in words (config keys, data, model); a reward-model run against
    a policy run (or the other way round) is said as such rather than as every key that differs."""
    changes = []
    old_config, new_config = saved.get("config") or {}, current.get("config") or {}
    kinds = ["a reward-model run" if "backbone" in config else "a policy run" for config in (old_config, new_config)]
    if old_config and new_config and kinds[0] != kinds[1]:
        return f"it holds {kinds[0]}, and this is {kinds[1]}"
    keys = sorted(k for k in set(old_config) | set(new_config) if old_config.get(k) != new_config.get(k))
    if keys:
        changes.append(f"config: {', '.join(keys)} changed")
    old_data, new_data = saved.get("data") or {}, current.get("data") or {}
    if old_data != new_data:
        changes.append(f"data: {old_data.get('records', '?')} records (sha256 {str(old_data.get('sha256'))[:12]}) "
                       f"then, {new_data.get('records', '?')} records (sha256 {str(new_data.get('sha256'))[:12]}) now")
    if (saved.get("model") or {}) != (current.get("model") or {}):
        changes.append(f"model: {saved.get('model')} then, {current.get('model')} now")
    return "; ".join(changes) or "the fingerprints differ"


# ------------------------------------------------------------------------------------------ integrity
def _zip_problem(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"not a whole torch archive ({error})"
    return f"member {bad} fails its CRC check" if bad else None


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return f"not valid JSON ({error})"
    return None


def checkpoint_problem(directory: str | os.PathLike) -> tuple[Path, str] | None:
    """``(bad file, what is wrong)`` for the first damaged file of a checkpoint folder, or None when every
    ``.safetensors``, ``.pt``/``.pth``/``.bin`` (torch zip archives) and ``.json`` file in it is whole and
    nothing a resume needs is missing (weights, optimiser and scheduler state, a trainer state that is what
    the trainer wrote)."""
    checks = {".safetensors": _safetensors_problem, ".pt": _zip_problem, ".pth": _zip_problem,
              ".bin": _zip_problem, ".json": _json_problem}
    directory = Path(directory)
    for path in sorted(directory.rglob("*")):
        check = checks.get(path.suffix)
        if check is None or not path.is_file():
            continue
        try:
            problem = check(path)
        except OSError as error:
            problem = f"unreadable ({error.strerror or error})"
        if problem:
            return path, problem
    marker = directory / CHECKPOINT_MARKER
    if marker.is_file():
        try:
            json.loads(marker.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return marker, "not valid JSON"
    return _missing_part(directory)


# the weights a transformers.Trainer checkpoint holds: plain, sharded, a PEFT adapter, or pickle (allow_bin)
_TRAINER_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                    "pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin")


def _missing_part(directory: Path) -> tuple[Path, str] | None:
    """``(file, what is wrong)`` when a checkpoint lacks a file a resume needs, or its trainer state is not
    what the trainer wrote (a missing ``optimizer.pt`` would resume silently with a fresh optimiser)."""
    state_path = directory / "trainer_state.json"
    if not state_path.is_file():
        return state_path, "missing"
    state = json.loads(state_path.read_text(encoding="utf-8"))  # valid JSON: checked above
    plain_loop = (directory / "trainable.safetensors").exists() or (directory / "optimizer.safetensors").exists() \
        or (isinstance(state, dict) and "step" in state and "global_step" not in state)
    if plain_loop:  # rankalign's own loops (reward train, policy gradient): see save_checkpoint
        for name in ("trainable.safetensors", "optimizer.safetensors"):
            if not (directory / name).is_file():
                return directory / name, "missing"
        fine = (isinstance(state, dict) and type(state.get("step")) is int and isinstance(state.get("optimizer"), dict)
                and isinstance(state["optimizer"].get("param_groups"), list) and isinstance(state.get("history"), list))
        return None if fine else (state_path, "not the state this trainer writes (step, optimizer, history)")
    if not (isinstance(state, dict) and type(state.get("global_step")) is int and state["global_step"] >= 0):
        return state_path, "not a transformers trainer state (no whole-number global_step)"
    names = {path.name for path in directory.iterdir()}
    if any(name.startswith("global_step") or "fsdp" in name or name.startswith("optimizer_") for name in names):
        return None  # DeepSpeed or FSDP: their own layout of weights and optimiser shards
    if not names & set(_TRAINER_WEIGHTS):
        return directory / "model.safetensors", "missing (no weights in the checkpoint)"
    for name in ("optimizer.pt", "scheduler.pt"):  # transformers restores neither unless both are there
        if name not in names:
            return directory / name, "missing"
    return None


# ------------------------------------------------------------------------------------------ selection
def marked_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint-N`` folders that carry the completion marker, newest (highest N) first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    steps = []
    for path in output_dir.iterdir():
        if path.is_dir() and path.name.startswith("checkpoint-") and (path / CHECKPOINT_MARKER).exists():
            try:
                steps.append((int(path.name.split("-", 1)[1]), path))
            except ValueError:
                continue
    return [path for _, path in sorted(steps, reverse=True)]


def last_complete_checkpoint(output_dir: str | os.PathLike, *, warn: bool = True) -> str | None:
    """The newest checkpoint that is marked complete and whose files are whole (None if there is none).

    A marked checkpoint with a damaged file (a truncated weights, optimiser or trainer-state file) is
    skipped with a :class:`~rankalign.errors.RankalignWarning` that names the file.
    """
    for path in marked_checkpoints(output_dir):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        if warn:
            bad, what = problem
            warnings.warn(f"{bad}: {what}; skipping {path.name} and resuming from the previous complete "
                          "checkpoint", RankalignWarning, stacklevel=2)
    return None


def checkpoint_fingerprint(checkpoint: str | os.PathLike) -> dict | None:
    """The fingerprint stored in a checkpoint's marker (None for a marker without one)."""
    try:
        marker = json.loads((Path(checkpoint) / CHECKPOINT_MARKER).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    fingerprint = marker.get("fingerprint") if isinstance(marker, dict) else None
    return fingerprint if isinstance(fingerprint, dict) else None


def verify_checkpoint(checkpoint: str | os.PathLike, fingerprint: dict | None) -> None:
    """Raise :class:`ResumeError` unless ``checkpoint`` carries ``fingerprint`` (same hash)."""
    if fingerprint is None:
        return
    saved = checkpoint_fingerprint(checkpoint)
    name = Path(checkpoint)
    if saved is None:
        raise ResumeError(f"{name} carries no run fingerprint, so nothing shows it belongs to this run",
                          hint="start afresh with --no-resume (resume: false), or use another output_dir")
    if saved.get("hash") != fingerprint.get("hash"):
        raise ResumeError(f"{name} belongs to a different run ({describe_difference(saved, fingerprint)})",
                          hint="use another output_dir, or --no-resume to start this one afresh")


def select_checkpoint(output_dir: str | os.PathLike, fingerprint: dict | None) -> str | None:
    """The checkpoint a resume uses: :func:`last_complete_checkpoint`, verified against ``fingerprint``."""
    checkpoint = last_complete_checkpoint(output_dir)
    if checkpoint is not None:
        verify_checkpoint(checkpoint, fingerprint)
    return checkpoint


def precheck(output_dir: str | os.PathLike, fingerprint: dict) -> None:
    """Refuse early (before any model is loaded) when the checkpoint a resume would use has no fingerprint
    or another config or data; ``fingerprint`` may lack the model object's part (compared later)."""
    checkpoint = last_complete_checkpoint(output_dir, warn=False)
    if checkpoint is None:
        return
    saved = checkpoint_fingerprint(checkpoint)
    if saved is None:
        verify_checkpoint(checkpoint, fingerprint)  # raises: no fingerprint
    then = {key: saved.get(key) for key in ("config", "data")}
    now = {key: fingerprint.get(key) for key in ("config", "data")}
    if then != now:
        raise ResumeError(f"{checkpoint} belongs to a different run ({describe_difference(then, now)})",
                          hint="use another output_dir, or --no-resume to start this one afresh")


def write_marker(checkpoint: str | os.PathLike, global_step: int, fingerprint: dict | None) -> None:
    """Mark ``checkpoint`` complete, with the run's fingerprint."""
    atomic_write_json(Path(checkpoint) / CHECKPOINT_MARKER, {"global_step": global_step, "fingerprint": fingerprint})


# ------------------------------------------------------------------------------------------ finished runs
def mark_finished(final_dir: str | os.PathLike, *, global_step: int, max_steps: int, epochs: float,
                  fingerprint: dict) -> None:
    """Record in ``final/`` that the run finished (step, length asked for, fingerprint)."""
    atomic_write_json(Path(final_dir) / FINISHED_MARKER, {"global_step": int(global_step), "max_steps": int(max_steps),
                                                          "epochs": float(epochs), "fingerprint": fingerprint})


def finished_run(output_dir: str | os.PathLike) -> dict | None:
    """The finished marker of ``output_dir/final`` (None when the run has not finished)."""
    path = Path(output_dir) / "final" / FINISHED_MARKER
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    whole = (isinstance(marker, dict) and type(marker.get("global_step")) is int
             and type(marker.get("max_steps", -1)) is int and isinstance(marker.get("epochs", 0.0), (int, float))
             and not isinstance(marker.get("epochs", 0.0), bool) and isinstance(marker.get("fingerprint") or {}, dict))
    if not whole:  # as if the run had not finished: it resumes from its last checkpoint
        warnings.warn(f"{path}: not the marker a finished run writes; ignoring it", RankalignWarning, stacklevel=2)
        return None
    return marker


def finished_note(output_dir, fingerprint: dict, max_steps: int, epochs: float) -> str | None:
    """A message when this run already finished in ``output_dir`` and is not asked to go further, else None.

    Going further means a larger ``max_steps`` (or, for a run by epochs, more ``epochs``); then training
    continues from the last checkpoint, which must exist.
    """
    marker = finished_run(output_dir)
    if marker is None or (marker.get("fingerprint") or {}).get("hash") != fingerprint.get("hash"):
        return None
    done = int(marker.get("global_step", 0))
    if max_steps > 0:
        longer = max_steps > done
    else:
        longer = int(marker.get("max_steps", -1)) <= 0 and epochs > float(marker.get("epochs", 0.0))
    if not longer:
        return (f"{output_dir} holds this run, finished at step {done}; nothing to do (raise max_steps, e.g. "
                f"--set max_steps={done * 2}, to train further, or use --no-resume to start afresh)")
    if last_complete_checkpoint(output_dir, warn=False) is None:
        raise ResumeError(f"{output_dir}: the run finished at step {done} without a checkpoint to continue from "
                          "(save_steps: 0)", hint="use --no-resume to train afresh, or set save_steps > 0")
    return None


def clear_run(output_dir: str | os.PathLike) -> list[Path]:
    """Before a fresh start in a used folder: remove its ``checkpoint-*`` folders and the finished marker, so
    neither a later resume nor checkpoint rotation can mix them with the new run. Returns what was removed."""
    import shutil

    output_dir = Path(output_dir)
    removed = []
    if output_dir.is_dir():
        for path in output_dir.iterdir():
            if path.is_dir() and path.name.startswith("checkpoint-"):
                shutil.rmtree(path)
                removed.append(path)
    finished = output_dir / "final" / FINISHED_MARKER
    if finished.exists():
        finished.unlink()
        removed.append(finished)
    return removed


# ------------------------------------------------------------------------------- a plain training loop's checkpoints
# ``rankalign reward train`` and ``rankalign.online.run_policy_gradient`` (loops of their own, not
# transformers.Trainer) write and read their checkpoints with these two functions.
def _trainable_state(model) -> dict:
    return {name: p.detach().contiguous().cpu() for name, p in model.named_parameters() if p.requires_grad}


def _optimizer_tensors(optimizer) -> tuple[dict, dict]:
    """An optimizer's state as flat tensors (``state.<param>.<key>``) plus JSON for the rest."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if hasattr(value, "detach"):
                tensors[f"state.{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_tensors(tensors: dict, meta: dict) -> dict:
    import torch

    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for entries in state.values():
        if "step" in entries and not hasattr(entries["step"], "detach"):
            entries["step"] = torch.tensor(float(entries["step"]))
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(model, output_dir: str | os.PathLike, step: int, state: dict, fingerprint: dict | None = None,
                    extra_tensors: dict | None = None) -> Path:
    """``output_dir/checkpoint-<step>``: trainable weights, optimiser, scheduler (``state["scheduler"]``, if
    any), RNG and ``state["history"]`` (and ``extra_tensors``, e.g. a sampling generator's state, stored beside
    the optimiser as ``extra.<name>``), in safetensors and JSON; marked complete last."""
    import torch
    from safetensors.torch import save_file

    from rankalign._atomic import atomic_write_path

    directory = Path(output_dir) / f"checkpoint-{step}"
    directory.mkdir(parents=True, exist_ok=True)
    weights = _trainable_state(model)
    atomic_write_path(directory / "trainable.safetensors", lambda t: save_file(weights, t))
    tensors, meta = _optimizer_tensors(state["optimizer"])
    scheduler = state.get("scheduler")
    tensors["rng"] = torch.get_rng_state()
    for name, value in (extra_tensors or {}).items():
        tensors[f"extra.{name}"] = value.detach().contiguous().cpu()
    atomic_write_path(directory / "optimizer.safetensors", lambda t: save_file(tensors, t))
    atomic_write_json(directory / "trainer_state.json",
                      {"step": step, "optimizer": meta, "scheduler": scheduler.state_dict() if scheduler else None,
                       "history": state["history"]}, default=float)
    write_marker(directory, step, fingerprint)
    for old in Path(output_dir).glob("checkpoint-*"):  # keep the newest two complete checkpoints
        if old != directory and (old / CHECKPOINT_MARKER).exists():
            steps = sorted(int(p.name.split("-", 1)[1]) for p in Path(output_dir).glob("checkpoint-*")
                           if (p / CHECKPOINT_MARKER).exists() and p.name.split("-", 1)[1].isdigit())
            if int(old.name.split("-", 1)[1]) < steps[-2]:
                import shutil

                shutil.rmtree(old, ignore_errors=True)
    return directory


def load_checkpoint(model, directory: str | os.PathLike) -> dict:
    """Restore the trainable weights of ``model`` and return the ``resume_state`` for the training loop."""
    import torch
    from safetensors.torch import load_file

    directory = Path(directory)
    weights = load_file(directory / "trainable.safetensors")
    parameters = dict(model.named_parameters())
    missing = sorted(set(weights) - set(parameters))
    if missing:
        raise ResumeError(f"{directory}: checkpoint weights {missing[:3]} do not fit this model")
    with torch.no_grad():
        for name, value in weights.items():
            parameters[name].copy_(value)
    tensors = load_file(directory / "optimizer.safetensors")
    rng = tensors.pop("rng")
    extra = {name[len("extra."):]: tensors.pop(name) for name in list(tensors) if name.startswith("extra.")}
    meta = json.loads((directory / "trainer_state.json").read_text())
    return {"step": meta["step"], "optimizer": _optimizer_from_tensors(tensors, meta["optimizer"]),
            "scheduler": meta["scheduler"], "rng": rng, "history": meta["history"], "extra": extra}
