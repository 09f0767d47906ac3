"""Build the course's static web book into build/book/html, from the committed sources, executing nothing.

    .venv/bin/python scripts/build_book.py

Needs the `book` extra (Sphinx, myst-nb, sphinx-book-theme and django-static-mathjax for an offline MathJax).
Steps:
1. Stage the book's sources into build/book/src, laid out as in the repository so that every relative link in
   them resolves as on GitHub: README.md; docs/, with docs/index.md as the root's index.md (but not conf.py,
   _static/ and _templates/, which Sphinx reads from docs/ itself); notebooks/0*.ipynb with notebooks/README.md
   and notebooks/solutions/*.py; the results/ reports with their PNG files. build/book is removed first: every
   build starts from scratch (about 20 s), so no page, image or cross-reference outlives its source.
2. Run Sphinx (configuration: docs/conf.py) into build/book/html, doctrees in build/book/doctrees, its warnings
   in build/book/warnings.log. The notebooks are rendered from their stored outputs (myst-nb, execution off).
3. Fail on any warning except those that come from a docstring (formatting of the API pages): a missing page, a
   broken toctree, link, include or image fails the build. Fail, too, if a file appeared in (or vanished from)
   notebooks/ or results/ during the build.
"""
from __future__ import annotations

import argparse
import hashlib
import posixpath
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parent.parent
BOOK = REPO / "build" / "book"
SOURCE_GLOBS = [  # repository files the book is made of, staged at the same relative path
    "README.md", "docs/**/*",
    "notebooks/README.md", "notebooks/0*.ipynb", "notebooks/solutions/*.py",
    "results/**/*.md", "results/**/*.png",
]
# Sphinx reads these from docs/ itself (the configuration folder, `-c docs`): they are not pages.
NOT_STAGED = {"docs/conf.py", "docs/_static", "docs/_templates", "__pycache__"}
RENAMED = {"docs/index.md": "index.md"}  # the root document sits at the root, beside README.md
# A markdown link to a folder works on GitHub (it lists the folder) but names no page of a book: such a link is
# pointed at the page that shows the folder's contents, in the staged copy only.
FOLDER_PAGES = {"notebooks/solutions": "docs/solutions.md"}
FOLDER_LINK = re.compile(r"\]\((?P<target>[^()\s#:]+/)\)")  # [text](relative/folder/)
READ_ONLY = ["notebooks", "results"]  # the build must leave these exactly as they are
# One record of Sphinx's warning file: "location: WARNING: message [type]", or without a location.
WARNING_START = re.compile(r"^(?:(?P<location>.*?): )?(?P<level>WARNING|ERROR|CRITICAL|SEVERE): ", re.MULTILINE)


def staged_sources(repo: Path = REPO) -> dict[str, Path]:
    """The book's sources: staged path (relative, POSIX) -> file in `repo`."""
    staged: dict[str, Path] = {}
    for pattern in SOURCE_GLOBS:
        for path in sorted(repo.glob(pattern)):
            relative = path.relative_to(repo).as_posix()
            parents = {parent.as_posix() for parent in PurePosixPath(relative).parents}
            if path.is_file() and not (NOT_STAGED & (parents | {relative, path.parent.name})):
                staged[RENAMED.get(relative, relative)] = path
    return staged


def link_folders_to_pages(text: str, staged_path: str) -> str:
    """`text` (markdown staged at `staged_path`) with each link to a folder of FOLDER_PAGES pointed at its page."""
    folder = PurePosixPath(staged_path).parent

    def replace(match: re.Match[str]) -> str:
        target = posixpath.normpath((folder / match.group("target")).as_posix())
        page = FOLDER_PAGES.get(target)
        return match.group(0) if page is None else f"]({posixpath.relpath(page, folder.as_posix())})"

    return FOLDER_LINK.sub(replace, text)


def stage(src: Path, repo: Path = REPO) -> int:
    """Copy the sources into `src`, an empty or missing folder; return the file count.

    In markdown copies, links to a folder that a page shows (FOLDER_PAGES) point at that page.
    """
    sources = staged_sources(repo)
    for relative, path in sources.items():
        target = src / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        if target.suffix == ".md":
            target.write_text(link_folders_to_pages(target.read_text(), relative))
    return len(sources)


def warning_records(text: str) -> Iterator[tuple[str, str]]:
    """(location, whole record) for each warning or error in a Sphinx warning file; continuation lines included."""
    starts = list(WARNING_START.finditer(text))
    for match, following in zip(starts, starts[1:] + [None]):
        record = text[match.start():following.start() if following else len(text)].rstrip()
        yield match.group("location") or "", record


def failing_warnings(text: str) -> tuple[list[str], int]:
    """The warnings that fail the build, and the number tolerated: those located in a docstring.

    Autodoc locates a docstring's warnings as "<file>:docstring of <object>:<line>"; autosummary those of a
    docstring's first sentence, which its tables show, as "<generated page>:<line>:<autosummary>:<line>".
    """
    failing, tolerated = [], 0
    for location, record in warning_records(text):
        if "docstring of " in location or ":<autosummary>:" in location:
            tolerated += 1
        else:
            failing.append(record)
    return failing, tolerated


def snapshot(repo: Path = REPO) -> dict[str, str]:
    """sha256 of every file under the read-only folders, to check what the build left there."""
    return {path.relative_to(repo).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for folder in READ_ONLY for path in sorted((repo / folder).rglob("*")) if path.is_file()}


def compare(before: dict[str, str], after: dict[str, str]) -> tuple[list[str], list[str]]:
    """(files created or removed, files whose content changed) between two snapshots.

    Sphinx reads only the staged copies, so it cannot write into the repository's folders through a source path;
    a file that appears there (an execution cache, a notebook's output folder) is a build artefact and fails the
    build. A changed file is reported but does not fail it: someone may be editing the notebooks meanwhile.
    """
    return (sorted(set(before) ^ set(after)),
            sorted(name for name in set(before) & set(after) if before[name] != after[name]))


def run_sphinx(src: Path, out: Path, doctrees: Path, warnings: Path) -> int:
    """Sphinx's HTML build of `src` with docs/conf.py; returns its exit status."""
    from sphinx.cmd.build import build_main  # imported here so that the helpers above need no Sphinx

    return build_main(["-b", "html", "-q", "-c", str(REPO / "docs"), "-d", str(doctrees), "-w", str(warnings),
                       str(src), str(out)])


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)  # --help; no options
    start = time.monotonic()
    if BOOK.exists():
        shutil.rmtree(BOOK)
    src, out, doctrees, warnings = BOOK / "src", BOOK / "html", BOOK / "doctrees", BOOK / "warnings.log"
    before = snapshot()
    staged = stage(src)
    status = run_sphinx(src, out, doctrees, warnings)
    failing, tolerated = failing_warnings(warnings.read_text() if warnings.exists() else "")
    created_or_removed, edited = compare(before, snapshot())
    if created_or_removed:
        failing.append(f"files appeared in or vanished from {' or '.join(f'{name}/' for name in READ_ONLY)} "
                       "during the build: "
                       + ", ".join(created_or_removed))
    if edited:
        print("note: changed during the build (by another process? the build reads only its staged copies): "
              + ", ".join(edited), file=sys.stderr)
    if status != 0:
        failing.append(f"sphinx-build exited with status {status} (its messages are above)")
    if failing:
        print(f"book build FAILED ({len(failing)} problems; all warnings in {warnings}):\n  "
              + "\n  ".join(failing), file=sys.stderr)
        return 1
    pages = sum(1 for path in out.rglob("*.html") if not {"_static", "_sources"} & set(path.relative_to(out).parts))
    print(f"book built in {time.monotonic() - start:.1f} s: {pages} HTML pages from {staged} staged files -> "
          f"{(out / 'index.html').relative_to(REPO)}; {tolerated} docstring-formatting warnings tolerated "
          f"(listed in {warnings.relative_to(REPO)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
