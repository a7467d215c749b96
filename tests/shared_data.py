"""Where the real data of ``shared/data`` is, for tests that use it.

Looked up in order: ``$RANKALIGN_SHARED_DATA``, then ``shared/data`` beside the repository (CI's layout,
a developer checkout's, and a worktree whose parent folder links ``shared``). Tests that need it are marked ``needs_shared_data``
and skip, saying why, on a machine without it.
"""

import os
from pathlib import Path

import pytest

_CANDIDATES = [
    os.environ.get("RANKALIGN_SHARED_DATA"),
    Path(__file__).resolve().parents[2] / "shared" / "data",
]
SHARED_DATA: Path | None = next((Path(c) for c in _CANDIDATES if c and Path(c).is_dir()), None)

needs_shared_data = pytest.mark.skipif(
    SHARED_DATA is None, reason="needs shared/data beside the repository (or RANKALIGN_SHARED_DATA)")


def shared_path(relative: str) -> Path:
    """``SHARED_DATA / relative`` (a path that does not exist when the folder is absent)."""
    return (SHARED_DATA or Path("/nonexistent-shared-data")) / relative
