"""Let oneMKL run its AVX2 kernels on AMD processors (x86-64 Linux), for PyTorch's float32 matrix products.

PyTorch's CPU wheels do their BLAS (``torch.mm``, ``nn.Linear``) with Intel oneMKL, linked into
``libtorch_cpu.so``. oneMKL picks its kernels by processor: on a CPU it does not take for an Intel one it
runs its generic x86-64 code path, whatever the CPU's vector units. ``MKL_VERBOSE=1`` shows it: on an AMD
EPYC (Zen 3, AVX2 and FMA) its banner ends in "Intel(R) Architecture processors", where an Intel CPU of
the same generation gets "Intel(R) Advanced Vector Extensions 2 (Intel(R) AVX2) enabled processors". The
switch of older releases (``MKL_DEBUG_CPU_TYPE=5``), ``MKL_CBWR=AVX2`` and ``MKL_ENABLE_INSTRUCTIONS=AVX2``
do not change this choice (checked with oneMKL 2024.0 in PyTorch 2.13).

The choice goes through one exported function, ``mkl_serv_intel_cpu_true``. A shared library that
defines it to return 1, loaded with ``RTLD_GLOBAL`` **before** PyTorch, comes first in the dynamic
linker's search, so oneMKL's call lands there and it then picks its kernels from the CPU's feature flags,
as on an Intel processor. The results are those of oneMKL's AVX2 kernels:
the same products, rounded as those kernels round. On this project's 2-core AMD EPYC machine a steady
SmolLM2-135M DPO step (four pairs, prompt 256, responses 64) took 10.2-11.0 s against 13.1-13.8 s in runs
back to back (README, "Benchmarks on the real model", which also gives the figures with TRL on the same
kernels).

:func:`enable` does this once per process, and ``import rankalign`` calls it, when all of these hold:

* Linux on x86-64, CPU vendor ``AuthenticAMD`` with the ``avx2`` and ``fma`` flags (``/proc/cpuinfo``);
* PyTorch is not imported yet: once ``libtorch_cpu.so`` is loaded the symbol is bound to oneMKL's own
  definition and loading the library changes nothing (so import rankalign before torch; the
  ``rankalign`` command does);
* the environment variable ``RANKALIGN_MKL_AVX2`` is not ``off``;
* the library exists or can be built: its C source is the two one-line functions below, compiled once
  with ``$CC``, ``cc`` or ``gcc`` into ``$RANKALIGN_HOME/cpu/`` (default ``~/.cache/rankalign/cpu/``),
  under a name that carries the source's sha256 (written to a temporary name and renamed, so concurrent
  processes never load a half-written file). Without a C compiler nothing changes.

On any other machine (Intel, ARM, macOS, a PyTorch built on OpenBLAS) the library is never built or
loaded, and on a PyTorch without oneMKL it would define two functions nobody calls. :func:`describe` says
what happened, in words; the CPU training loops print it once.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: environment variable; "off" (or "0", "no", "false") leaves oneMKL's own choice alone
ENV_VARIABLE = "RANKALIGN_MKL_AVX2"

SOURCE = """\
/* rankalign: tell oneMKL's dispatcher that this x86-64 CPU may run its Intel code paths (see _mkl_avx2.py) */
int mkl_serv_intel_cpu_true(void) { return 1; }
int mkl_serv_intel_cpu(void) { return 1; }
"""

_status: str | None = None  # what enable() did in this process, in words (None: not called yet)
_library = None  # the loaded ctypes.CDLL, kept referenced for the process's lifetime
_announced = False


def cpu_wants_it(cpuinfo: str, machine: str, system: str) -> str | None:
    """None when this CPU is one oneMKL underserves (AMD x86-64 with AVX2 and FMA), else why not."""
    if system != "Linux" or machine not in ("x86_64", "AMD64"):
        return f"not x86-64 Linux ({system} {machine})"
    vendor = flags = None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and vendor is None:
            vendor = value.strip()
        elif key == "flags" and flags is None:
            flags = set(value.split())
        if vendor is not None and flags is not None:
            break
    if vendor != "AuthenticAMD":
        return f"CPU vendor {vendor or 'unknown'}: oneMKL already picks its kernels by the CPU's features"
    missing = [flag for flag in ("avx2", "fma") if flag not in (flags or ())]
    if missing:
        return f"this AMD CPU lacks {', '.join(missing)}: no faster oneMKL code path to take"
    return None


def cache_folder() -> Path:
    """``$RANKALIGN_HOME/cpu``, else ``~/.cache/rankalign/cpu`` (beside the model cache)."""
    root = os.environ.get("RANKALIGN_HOME")
    return Path(root) / "cpu" if root else Path.home() / ".cache" / "rankalign" / "cpu"


def build_library(folder: Path) -> Path:
    """The compiled library in ``folder``, built once (atomically) with the first C compiler found.

    Raises ``RuntimeError`` naming the reason when there is no compiler or it fails."""
    digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:16]
    target = folder / f"mkl_avx2_{digest}.so"
    if target.is_file():
        return target
    compiler = next((c for c in (os.environ.get("CC"), "cc", "gcc") if c and shutil.which(c)), None)
    if compiler is None:
        raise RuntimeError("no C compiler ($CC, cc, gcc) to build it")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as scratch:
        source = Path(scratch) / "mkl_avx2.c"
        source.write_text(SOURCE)
        built = Path(scratch) / target.name
        done = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(built), str(source)],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or not built.is_file():
            raise RuntimeError(f"{compiler} failed: {(done.stderr or done.stdout).strip()[-300:]}")
        os.replace(built, target)
    return target


def enable() -> str:
    """Load the library if this process and machine qualify (module docstring); returns :func:`describe`."""
    global _status, _library
    if _status is not None:
        return _status
    setting = os.environ.get(ENV_VARIABLE, "").strip().lower()
    if setting in ("off", "0", "no", "false"):
        _status = f"oneMKL's own code path ({ENV_VARIABLE}={setting})"
        return _status
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace") if sys.platform == "linux" else ""
    except OSError:
        cpuinfo = ""
    reason = cpu_wants_it(cpuinfo, platform.machine(), platform.system())
    if reason is not None:
        _status = f"oneMKL's own code path ({reason})"
        return _status
    if "torch" in sys.modules:
        _status = ("oneMKL's generic x86-64 code path on this AMD CPU: torch was imported before rankalign, so "
                  "its AVX2 kernels could not be enabled (import rankalign first)")
        return _status
    try:
        path = build_library(cache_folder())
        _library = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        _status = f"oneMKL's generic x86-64 code path on this AMD CPU (could not enable its AVX2 kernels: {error})"
        return _status
    _status = f"oneMKL's AVX2 kernels on this AMD CPU ({path.name} loaded before torch; {ENV_VARIABLE}=off to undo)"
    return _status


def describe() -> str:
    """What :func:`enable` did in this process, in words (it runs it if ``import rankalign`` has not)."""
    return _status if _status is not None else enable()


def announce_once() -> None:
    """Print :func:`describe` once per process on stderr, where it concerns this machine (an AMD CPU)."""
    global _announced
    line = describe()
    if _announced or "AMD CPU" not in line:
        return
    _announced = True
    print(f"cpu blas: {line}", file=sys.stderr, flush=True)


__all__ = ["ENV_VARIABLE", "SOURCE", "describe", "announce_once", "cpu_wants_it", "cache_folder", "build_library", "enable"]
