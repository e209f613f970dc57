"""The project stands alone: no file points at material that a user's clone does not have."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A path outside the repository that notes were once read from; every fact the project relies on
# is said in its own docs (docs/paper.md) or config comments.
OUTSIDE = re.compile(
    r"(?<![\w.])shared/(reference|hooks)\b|\.\./shared\b|\b(medmat|feasibility|anchors)\.md\b"
)


def tracked_files() -> list[Path]:
    res = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if res.returncode == 0 and res.stdout.strip():
        return [ROOT / line for line in res.stdout.splitlines()]
    skip = {".git", ".venv", "outputs", "multirun", "__pycache__"}
    return [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]


def test_the_pattern_catches_a_reference():
    assert OUTSIDE.search("see shared/reference/medmat.md")
    assert OUTSIDE.search("(../shared/reference)")
    assert OUTSIDE.search("(feasibility.md: measured)")
    assert not OUTSIDE.search("torch shared/ memory") and not OUTSIDE.search("cgmed/shared_state.py")


def test_no_file_points_outside_the_project():
    hits = []
    for path in tracked_files():
        if not path.is_file() or path == Path(__file__).resolve():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        hits += [
            f"{path.relative_to(ROOT)}:{i}"
            for i, line in enumerate(text.splitlines(), 1)
            if OUTSIDE.search(line)
        ]
    assert not hits, "say it in the project's own words (docs/ or the config comment): " + ", ".join(hits)
