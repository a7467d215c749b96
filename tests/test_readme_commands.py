"""Every command in README.md and examples/README.md runs as written.

The ```bash and ```python blocks of each file are extracted and run, in order, in a scratch copy of the
repository (its tracked and untracked-but-not-ignored files, so uncommitted edits are what is tested),
with ``shared`` beside it linked to the real data, and ``.venv/bin`` holding ``python`` and ``rankalign``
for this interpreter with the checkout's ``src`` first (what ``make install`` gives a newcomer; ``source
.venv/bin/activate`` works too). A block fails the test when any of its commands exits non-zero
(``bash -e -o pipefail``). After the run the scratch copy must have no new untracked files: outputs go to
ignored folders.

Markers, an HTML comment on the line just above a block's opening fence (invisible on GitHub):

* ``<!-- readme-test: slow -->`` the block runs only in the slow suite (``make test-slow``); the fast
  test runs every other block, so a slow block's outputs must not be needed by a later fast one;
* ``<!-- readme-test: skip REASON -->`` the block is never run; for commands that cannot run here (GPU
  installs, ``pip install`` from an index, ``make test`` itself). Used sparingly; the reason is required.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared_data import SHARED_DATA, needs_shared_data

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "examples/README.md"]
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*readme-test:\s*(slow|skip)\b\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    document: str
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    marker: str | None  # None, "slow" or "skip"
    reason: str = ""

    @property
    def name(self) -> str:
        return f"{self.document}:{self.line}"


def extract_blocks(text: str, document: str) -> list[Block]:
    """The fenced ``bash``/``sh``/``python`` blocks of a Markdown text, with their markers."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        language, start = match.group(1), i
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        if language in ("bash", "sh", "python"):
            marker = _MARKER.match(lines[start - 1]) if start > 0 else None
            blocks.append(Block(document, start + 1, language, "\n".join(lines[start + 1:j]) + "\n",
                                marker.group(1) if marker else None, marker.group(2) if marker else ""))
        i = j + 1
    return blocks


def test_extract_blocks_reads_markers_and_languages():
    text = ("# t\n```bash\necho a\n```\n<!-- readme-test: skip needs a GPU -->\n```bash\nnvidia-smi\n```\n"
            "```text\nnot code\n```\n<!-- readme-test: slow -->\n```python\nprint(1)\n```\n")
    blocks = extract_blocks(text, "t.md")
    assert [(b.line, b.language, b.marker, b.reason, b.code) for b in blocks] == [
        (2, "bash", None, "", "echo a\n"),
        (6, "bash", "skip", "needs a GPU", "nvidia-smi\n"),
        (13, "python", "slow", "", "print(1)\n"),
    ]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_skip_marker_gives_a_reason(document):
    for block in extract_blocks((REPO / document).read_text(), document):
        if block.marker == "skip":
            assert block.reason, f"{block.name}: a skipped block must say why"


# ------------------------------------------------------------------------------------------ scratch copy
def _checkout_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    return [name for name in listed if name and (REPO / name).is_file()]


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=env).stdout


def make_scratch(root: Path) -> Path:
    """A copy of the checkout at ``root/repo`` (a git repository with everything committed), ``root/shared``
    linking the real data, and ``.venv/bin`` wrappers that run this interpreter on the copy's ``src``."""
    repo = root / "repo"
    for name in _checkout_files():
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    (root / "shared").symlink_to(SHARED_DATA.parent, target_is_directory=True)
    bin_dir = repo / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    prefix = f'export PYTHONPATH="{repo / "src"}${{PYTHONPATH:+:$PYTHONPATH}}"\n'
    (bin_dir / "python").write_text(f'#!/bin/sh\n{prefix}exec "{sys.executable}" "$@"\n')
    (bin_dir / "rankalign").write_text(f'#!/bin/sh\n{prefix}exec "{sys.executable}" -m rankalign "$@"\n')
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    for name in ("python", "rankalign"):
        (bin_dir / name).chmod(0o755)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "scratch")
    return repo


def run_block(block: Block, repo: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               MPLBACKEND="Agg", COLUMNS="120")
    if block.language == "python":
        command = [str(repo / ".venv" / "bin" / "python"), "-c", block.code]
    else:
        command = ["bash", "-e", "-o", "pipefail", "-c", block.code]
    return subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=1800)


def _run_document(document: str, tmp_path: Path, *, include_slow: bool) -> list[str]:
    repo = make_scratch(tmp_path)
    ran = []
    for block in extract_blocks((REPO / document).read_text(), document):
        if block.marker == "skip" or (block.marker == "slow" and not include_slow):
            continue
        done = run_block(block, repo)
        assert done.returncode == 0, (f"{block.name} failed (exit {done.returncode}):\n{block.code}\n"
                                      f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}")
        ran.append(block.name)
    untracked = _git(repo, "status", "--porcelain", "--untracked-files=all").splitlines()
    assert not untracked, f"running {document} left files in the checkout: {untracked[:20]}"
    return ran


@needs_shared_data
@pytest.mark.parametrize("document", DOCUMENTS)
def test_readme_commands_run(document, tmp_path):
    """Every block not marked slow or skip runs, in order, and leaves no untracked file."""
    assert _run_document(document, tmp_path, include_slow=False)


@pytest.mark.slow
@needs_shared_data
@pytest.mark.parametrize("document", DOCUMENTS)
def test_readme_commands_run_including_slow(document, tmp_path):
    """The slow suite: the slow blocks too."""
    assert _run_document(document, tmp_path, include_slow=True)
