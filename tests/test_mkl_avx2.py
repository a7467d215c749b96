"""rankalign/_mkl_avx2.py: oneMKL's AVX2 kernels on AMD CPUs, when rankalign is imported before torch."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rankalign import _mkl_avx2

AMD = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nflags\t\t: fpu sse2 avx fma avx2 f16c\n\n" \
      "processor\t: 1\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu\n"
INTEL = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx fma avx2 avx512f\n"


def test_only_amd_x86_64_linux_with_avx2_and_fma_qualifies():
    assert _mkl_avx2.cpu_wants_it(AMD, "x86_64", "Linux") is None  # the first processor's lines decide
    assert "GenuineIntel" in _mkl_avx2.cpu_wants_it(INTEL, "x86_64", "Linux")
    assert "lacks avx2" in _mkl_avx2.cpu_wants_it(AMD.replace(" avx2", ""), "x86_64", "Linux")
    assert "lacks fma" in _mkl_avx2.cpu_wants_it(AMD.replace(" fma", ""), "x86_64", "Linux")
    assert "not x86-64 Linux" in _mkl_avx2.cpu_wants_it(AMD, "aarch64", "Linux")
    assert "not x86-64 Linux" in _mkl_avx2.cpu_wants_it(AMD, "x86_64", "Darwin")
    assert "unknown" in _mkl_avx2.cpu_wants_it("", "x86_64", "Linux")


def test_the_library_is_built_once_under_its_source_hash(tmp_path, monkeypatch):
    if not any(shutil.which(c) for c in ("cc", "gcc")):
        pytest.skip("no C compiler on this machine")
    first = _mkl_avx2.build_library(tmp_path)
    assert first.name == f"mkl_avx2_{hashlib.sha256(_mkl_avx2.SOURCE.encode()).hexdigest()[:16]}.so"
    stamp = first.stat().st_mtime_ns
    monkeypatch.setenv("CC", "/nonexistent/cc")  # a second call must not compile again
    assert _mkl_avx2.build_library(tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no scratch folder left behind


def test_without_a_compiler_it_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(_mkl_avx2.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="no C compiler"):
        _mkl_avx2.build_library(tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_failing_compiler_is_reported_and_nothing_is_left(tmp_path, monkeypatch):
    broken = tmp_path / "bin" / "cc"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\necho 'cc: fatal error: out of cheese' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    with pytest.raises(RuntimeError, match="out of cheese"):
        _mkl_avx2.build_library(tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    environment = dict(os.environ, MKL_VERBOSE="1", **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=300)


PRODUCT = """
import numpy as np, torch
from rankalign import _mkl_avx2
g = torch.Generator().manual_seed(0)
a, b = torch.randn(300, 200, generator=g), torch.randn(200, 100, generator=g)
exact = a.double().numpy() @ b.double().numpy()  # float64 product as the reference
print("ERROR", float(np.abs((a @ b).double().numpy() - exact).max()))
print("STATUS", _mkl_avx2.describe())
"""


def mkl_banner(output: str) -> str:
    return next((line for line in output.splitlines() if line.startswith("MKL_VERBOSE oneMKL")), "")


def field(output: str, name: str) -> str:
    return next(line.split(" ", 1)[1] for line in output.splitlines() if line.startswith(name + " "))


@pytest.mark.skipif(_mkl_avx2.cpu_wants_it(Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists()
                                            else "", platform.machine(), platform.system()) is not None,
                    reason="not an AMD x86-64 CPU with AVX2 and FMA")
def test_on_this_amd_cpu_import_order_decides_the_kernels(tmp_path):
    import torch

    if "mkl" not in torch.__config__.show().lower() or not any(shutil.which(c) for c in ("cc", "gcc")):
        pytest.skip("torch without oneMKL, or no C compiler")
    home = str(tmp_path)
    first = run_python("import rankalign\n" + PRODUCT, RANKALIGN_HOME=home)
    assert first.returncode == 0, first.stderr
    assert "AVX2" in mkl_banner(first.stdout + first.stderr), mkl_banner(first.stdout + first.stderr)
    assert field(first.stdout, "STATUS").startswith("oneMKL's AVX2 kernels")
    assert float(field(first.stdout, "ERROR")) < 1e-3  # the same product, float32 rounding apart

    late = run_python("import torch\nimport rankalign\n" + PRODUCT, RANKALIGN_HOME=home)
    assert late.returncode == 0, late.stderr
    assert "AVX2" not in mkl_banner(late.stdout + late.stderr)
    assert "torch was imported before rankalign" in field(late.stdout, "STATUS")

    off = run_python("import rankalign\n" + PRODUCT, RANKALIGN_HOME=home, RANKALIGN_MKL_AVX2="off")
    assert "AVX2" not in mkl_banner(off.stdout + off.stderr)
    assert field(off.stdout, "STATUS") == "oneMKL's own code path (RANKALIGN_MKL_AVX2=off)"
    assert float(field(off.stdout, "ERROR")) < 1e-3
