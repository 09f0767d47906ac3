"""The web book (`python scripts/build_book.py`, then scripts/book_browser_test.py): its sources and helpers.

No build and no browser here (the book's own commands do both): the toctrees name every notebook, report,
docs page and public module; docs/conf.py renders the notebooks without running them and stays offline; the
staging, the warning filter and the link checker do what the build and the browser test rely on. Needs no Sphinx
(conf.py is read as source), except the test of conf.py's docstring filter, skipped without the `book` extra.
"""
from __future__ import annotations

import ast
import importlib.util
import re
import runpy
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```\{(?P<name>[\w-]+)\}(?P<argument>[^\n]*)\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)


def _script(name: str) -> ModuleType:
    """scripts/<name>.py as a module (registered, so that its dataclasses resolve their module)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _directive_entries(page: Path, directive: str) -> list[str]:
    """The content lines of each ```{directive} block of a MyST page, options and blank lines left out."""
    return [line.strip() for match in FENCE.finditer(page.read_text()) if match["name"] == directive
            for line in match["body"].splitlines() if line.strip() and not line.lstrip().startswith(":")]


def _directive_arguments(page: Path, directive: str) -> list[str]:
    """The argument of each ```{directive} block of a MyST page (what follows the directive's name)."""
    return [match["argument"].strip() for match in FENCE.finditer(page.read_text()) if match["name"] == directive]


def _conf() -> dict[str, object]:
    """docs/conf.py's top-level assignments whose values are literals (read, not executed)."""
    values = {}
    for node in ast.parse((DOCS / "conf.py").read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) and node.value is not None else []
        for target in targets:
            if isinstance(target, ast.Name):
                try:
                    values[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    pass  # computed at build time
    return values


def _conf_module() -> dict[str, object]:
    """docs/conf.py executed (it imports Sphinx and the package), as its namespace."""
    return runpy.run_path(str(DOCS / "conf.py"))


# --- what the book contains --------------------------------------------------------------------------------------

def test_the_course_toctree_lists_every_notebook_in_order():
    entries = _directive_entries(DOCS / "index.md", "toctree")
    notebooks = [entry for entry in entries if entry.startswith("notebooks/0")]
    expected = [f"notebooks/{path.stem}" for path in sorted((ROOT / "notebooks").glob("0*.ipynb"))]
    assert len(expected) >= 7
    assert notebooks == expected
    assert entries.index("notebooks/README") < entries.index(expected[0])  # the course's overview comes first


def test_every_docs_page_is_in_the_books_toctree():
    entries = set(_directive_entries(DOCS / "index.md", "toctree"))
    pages = {f"docs/{path.stem}" for path in DOCS.glob("*.md") if path.name != "index.md"}
    assert {"docs/protocol", "docs/results", "docs/api", "docs/solutions"} <= pages
    assert pages <= entries


def test_the_results_page_lists_every_report_once():
    entries = _directive_entries(DOCS / "results.md", "toctree")
    reports = sorted(f"/results/{path.parent.name}/{path.stem}" for path in (ROOT / "results").glob("*/*.md"))
    assert len(reports) >= 6
    assert sorted(entries) == reports


def test_the_api_page_lists_every_public_module():
    block = next(match["body"] for match in FENCE.finditer((DOCS / "api.md").read_text())
                 if match["name"] == "eval-rst" and ".. autosummary::" in match["body"])
    listed = [line.strip() for line in block.splitlines() if line.strip().startswith("hashrobust")]
    package = ROOT / "hashrobust"
    modules = {".".join(("hashrobust",) + path.relative_to(package).with_suffix("").parts).removesuffix(".__init__")
               for path in package.rglob("*.py") if not any(part.startswith("_") and part != "__init__.py"
                                                            for part in path.relative_to(package).parts)}
    assert {"hashrobust", "hashrobust.attacks", "hashrobust.attacks.fgsm", "hashrobust.cli"} <= modules
    assert len(listed) == len(set(listed))
    assert set(listed) == modules
    assert listed[0] == "hashrobust"


def test_the_solutions_page_includes_every_solution_module():
    included = _directive_arguments(DOCS / "solutions.md", "literalinclude")
    expected = [f"../notebooks/solutions/{path.name}" for path in sorted((ROOT / "notebooks/solutions").glob("*.py"))]
    assert len(expected) >= 7
    assert included == expected


def test_the_landing_page_is_the_readme():
    assert _directive_arguments(DOCS / "index.md", "include") == ["README.md"]


# --- how it is built -----------------------------------------------------------------------------------------------

def test_conf_renders_stored_outputs_and_stays_offline():
    conf = _conf()
    assert conf["nb_execution_mode"] == "off"
    assert conf["nb_ipywidgets_js"] == {}  # no require.js / widget manager from a CDN
    assert {"dollarmath", "amsmath"} <= set(conf["myst_enable_extensions"])
    assert "myst_nb" in conf["extensions"] and "sphinx.ext.mathjax" in conf["extensions"]
    assert not [ext for ext in conf["extensions"] if "intersphinx" in ext]
    assert not re.match(r"^(https?:)?//", conf["mathjax_path"]) and conf["mathjax_path"].endswith(".js")
    assert "README.md" in conf["exclude_patterns"]  # included by index.md, not a page of its own


def test_docstring_layout_is_kept_as_written():
    pytest.importorskip("sphinx")  # the `book` extra: conf.py imports Sphinx and docutils
    preformat = _conf_module()["preformat_indented_blocks"]
    lines = ["Intro.", "", "    import hashrobust as hr", "Next.", "", "| arch | layers |", "|---|---|", "",
             "Sources:", "    FGSM  Goodfellow", "", ":param x: the input", "    continued", "- a list item"]
    preformat(None, "module", "m", None, None, lines)
    assert lines == ["Intro.", "", "::", "", "    import hashrobust as hr", "", "Next.", "",
                     "::", "", "    | arch | layers |", "    |---|---|", "", "",
                     "Sources::", "", "    FGSM  Goodfellow", "", ":param x: the input", "    continued",
                     "- a list item"]


def test_staging_lays_out_the_sources_as_in_the_repository(tmp_path):
    build_book = _script("build_book")
    count = build_book.stage(tmp_path)
    staged = {path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*") if path.is_file()}
    assert count == len(staged)
    assert (tmp_path / "index.md").read_text() == (DOCS / "index.md").read_text()
    assert (tmp_path / "README.md").read_bytes() == (ROOT / "README.md").read_bytes()
    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        assert (tmp_path / "notebooks" / path.name).read_bytes() == path.read_bytes()
    assert {"docs/protocol.md", "docs/api.md", "docs/results.md", "notebooks/README.md"} <= staged
    assert not {"docs/index.md", "docs/conf.py"} & staged
    assert not [name for name in staged if name.startswith(("docs/_templates/", "docs/_static/"))]


def test_every_image_a_staged_page_shows_is_staged(tmp_path):
    _script("build_book").stage(tmp_path)
    shown = []
    for page in tmp_path.rglob("*.md"):
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", page.read_text()):
            if not re.match(r"^[a-z]+:", target):
                shown.append(page.parent / target)
    assert len(shown) >= 10  # the README's tour and badges, the results' heatmaps and figures
    assert [path for path in shown if not path.is_file()] == []


def test_a_link_to_a_folder_points_at_the_page_that_shows_it():
    link = _script("build_book").link_folders_to_pages
    assert link("in [`solutions/`](solutions/), one", "notebooks/README.md") == \
        "in [`solutions/`](../docs/solutions.md), one"
    assert link("[all](notebooks/solutions/)", "README.md") == "[all](docs/solutions.md)"
    unchanged = "[data](../data/) and [code](https://example.org/x/)"
    assert link(unchanged, "notebooks/README.md") == unchanged


def test_only_warnings_from_docstrings_are_tolerated():
    log = ("/r/hashrobust/models.py:docstring of hashrobust.models:9: ERROR: Undefined substitution. [docutils]\n"
           "/b/src/docs/generated/hashrobust.attacks.rst:31:<autosummary>:1: WARNING: Inline emphasis. [docutils]\n"
           "/b/src/index.md:12: WARNING: toctree contains reference to nonexisting document 'notebooks/07_x'\n"
           "  a continuation line\n"
           "WARNING: unsupported theme option 'x' given\n")
    failing, tolerated = _script("build_book").failing_warnings(log)
    assert tolerated == 2
    assert failing == ["/b/src/index.md:12: WARNING: toctree contains reference to nonexisting document "
                       "'notebooks/07_x'\n  a continuation line", "WARNING: unsupported theme option 'x' given"]


def test_the_read_only_check_tells_new_files_from_edits():
    compare = _script("build_book").compare
    before = {"notebooks/a.ipynb": "1", "results/m/r.md": "2"}
    after = {"notebooks/a.ipynb": "9", "results/m/r.md": "2", "notebooks/.jupyter_cache/x": "3"}
    assert compare(before, after) == (["notebooks/.jupyter_cache/x"], ["notebooks/a.ipynb"])


# --- the browser test's link checking, on a two-page site -----------------------------------------------------

@pytest.fixture
def site(tmp_path):
    (tmp_path / "a.html").write_text('<main id="main-content"><a href="b.html#there">b</a></main>')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.html").write_text('<h1 id="top">B</h1>')
    (tmp_path / "b.html").write_text('<section id="there"><a name="legacy"></a></section>')
    for skipped in ("_static", "_sources"):
        (tmp_path / skipped).mkdir()
        (tmp_path / skipped / "x.html").write_text("asset")
    return tmp_path


def test_book_pages_are_the_html_files_outside_assets(site):
    assert _script("book_browser_test").book_pages(site) == ["a.html", "b.html", "sub/b.html"]


def test_the_link_checker_resolves_pages_and_fragments(site):
    browser_test = _script("book_browser_test")
    with browser_test.serve(site) as base:
        links = browser_test.LinkChecker()
        assert links.problem(base + "b.html#there") is None
        assert links.problem(base + "b.html#legacy") is None
        assert links.problem(base + "sub/b.html") is None
        assert links.problem(base + "b.html#gone") == \
            f"link {base}b.html#gone: no element with id 'gone' on {base}b.html"
        assert links.problem(base + "missing.html") == f"link {base}missing.html answers HTTP 404"
        assert len(links.cache) == 3  # b.html fetched once for its three links

