"""rankalign: learning from human preference feedback, with the ranking as the native unit.

Layers (lower layers never import higher ones; tests/test_layers.py checks it): ``data`` -> ``stats`` ->
``losses`` -> ``engine`` -> ``reward`` / ``personal`` -> ``train`` -> ``online`` -> ``eval`` -> ``sim`` ->
``arena``. ``sim`` sits above ``eval``: the simulation lab scores its policies with eval's metrics, and
eval never imports sim. Importing ``rankalign`` itself is light: it exposes the record model; torch-based
subpackages are imported on demand.
"""

from . import _mkl_avx2

_mkl_avx2.enable()  # before anything imports torch: oneMKL's AVX2 kernels on AMD CPUs (see _mkl_avx2.py)

from .data.errors import DataError  # noqa: E402
from .data.records import Judgment, RankedList  # noqa: E402

__version__ = "0.1.0"
__all__ = ["RankedList", "Judgment", "DataError", "__version__"]
