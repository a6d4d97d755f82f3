"""The repository explains itself: docs/api.md matches the code, the docs' links resolve, and nothing cites
sections of a document that is not in the repository."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".json", ".cfg", ".sh"}


def _tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = [ROOT / line for line in out.splitlines()]
    return [f for f in files if f.suffix in TEXT_SUFFIXES and f.is_file()]


def test_api_reference_is_up_to_date():
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "api_reference.py"), "--check"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr


def test_no_citations_of_an_outside_spec():
    # "§3.1"-style section references point into a document readers do not have; link docs/ or a paper.
    pattern = re.compile(r"§|SPEC\s*§|\bSPEC\.md\b")
    hits = [
        f"{f.relative_to(ROOT)}:{n}: {line.strip()}"
        for f in _tracked_text_files()
        if f.name != "test_docs.py"
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, "\n".join(hits)


def test_relative_links_in_docs_resolve():
    link = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target, _ in link.findall(page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} → {target}")
    assert not broken, "\n".join(broken)


def test_docs_are_listed_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"docs/{p.name}" not in readme]
    assert not missing, f"README.md does not link {', '.join(missing)}"
