"""rankalign: learning from human preference feedback, with the ranking as the native unit.

Layers (lower layers never import higher ones): ``data`` -> ``stats`` -> ``losses`` -> ``engine`` ->
``reward`` / ``personal`` -> ``train`` -> ``eval`` -> ``sim``. Importing ``rankalign`` itself is light: it
exposes the record model; torch-based subpackages are imported on demand.
"""

from .data.errors import DataError
from .data.records import Judgment, RankedList

__version__ = "0.1.0"
__all__ = ["RankedList", "Judgment", "DataError", "__version__"]
