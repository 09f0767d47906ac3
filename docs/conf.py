"""Sphinx configuration of the hashrobust book: the README, the notebooks, the protocol, the results, the API.

`python scripts/build_book.py` stages the sources into build/book/src, laid out as in the repository (README.md,
notebooks/, results/, docs/; docs/index.md becomes the root's index.md) so that every relative link in them
resolves as it does on GitHub, then runs Sphinx there with this file (`-c docs`). Nothing is written outside
build/book. The notebooks are rendered from their stored outputs and never executed (`nb_execution_mode`).

Offline by design: no intersphinx, no CDN. MathJax 3 comes from the PyPI package django-static-mathjax (the
official MathJax 3.2.2 `es5` build, no dependencies) and is copied into `_static/mathjax/`; the notebooks' widget
outputs, which would need ipywidgets' JavaScript from a CDN and a live kernel, stay inert (`nb_ipywidgets_js`).
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
import shutil
from pathlib import Path

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.errors import ConfigError

project = "hashrobust"
author = "the hashrobust authors"
copyright = "the hashrobust authors"  # noqa: A001 (Sphinx's name)
html_title = "hashrobust: hash compression and adversarial attacks"

extensions = [
    "myst_nb",  # MyST markdown and .ipynb (it loads myst_parser itself)
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # the package's docstrings are Google style (Args:, Returns:, Example:)
    "sphinx.ext.mathjax",
]

root_doc = "index"
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
# README.md is the landing page's content (index.md includes it), never a page of its own.
exclude_patterns = ["README.md", "**/.ipynb_checkpoints"]

# ----------------------------------------------------------------------------- MyST and notebooks
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3  # `[text](#a-heading)` and `[text](page.md#a-heading)` resolve, as on GitHub
nb_execution_mode = "off"  # render the committed outputs; never run a kernel, never write into notebooks/
nb_merge_streams = True
nb_render_markdown_format = "myst"  # the notebooks' rendered tables (hashrobust.reports.table) are pipe tables
nb_ipywidgets_js: dict[str, dict[str, str]] = {}  # no CDN scripts: a static page has no kernel to drive a widget

# ----------------------------------------------------------------------------- API reference
REPO = Path(__file__).resolve().parent.parent
PACKAGES = sorted(init.parent.relative_to(REPO).as_posix().replace("/", ".")
                  for init in (REPO / "hashrobust").rglob("__init__.py"))  # hashrobust, hashrobust.attacks


def reexports(package: str) -> list[str]:
    """Where each name of `package.__all__` is defined, as 'module.name': the package's table on its API page.

    A class or function knows its module (`__module__`); for data (a constant) it is the module that the
    package's __init__.py imports it from.
    """
    module = importlib.import_module(package)
    imported_from = {alias.asname or alias.name: f"{package}.{node.module}" if node.level else str(node.module)
                     for node in ast.parse(Path(str(module.__file__)).read_text()).body
                     if isinstance(node, ast.ImportFrom) for alias in node.names}
    targets = []
    for name in module.__all__:
        obj = getattr(module, name)
        defined_in = obj.__module__ if inspect.isclass(obj) or inspect.isfunction(obj) else None
        targets.append(f"{defined_in or imported_from.get(name, package)}.{name}")
    return targets


# autosummary/module.rst: a package's page lists its re-exports. Absolute: autosummary looks for templates
# relative to the source folder (the staged build/book/src), the HTML builder relative to this one.
templates_path = [str(REPO / "docs" / "_templates")]
autosummary_generate = True  # docs/api.md's autosummary writes one page per module under the staged docs/
autosummary_context = {"reexports": {package: reexports(package) for package in PACKAGES}}
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_inherit_docstrings = False  # not torch's "Define the computation performed at every call" on forward()
napoleon_google_docstring = True
napoleon_numpy_docstring = False
highlight_language = "none"  # a docstring's preformatted block is plain text; code cells and fences name theirs
default_role = "py:obj"  # `name` in a docstring links to that object where it exists, else reads as code

# ----------------------------------------------------------------------------- HTML
html_theme = "sphinx_book_theme"
html_theme_options = {
    "home_page_in_toc": True,
    "use_download_button": True,  # the page's source: the .ipynb of a notebook page
    "show_toc_level": 2,
}
# pydata-sphinx-theme's default mode, "", logs a console error on a reader's first page; the reader can switch.
html_context = {"default_mode": "light"}
html_static_path = ["_static"]  # docs/_static/book.css
html_css_files = ["book.css"]
mathjax_path = "mathjax/tex-chtml.js"  # relative to _static/; copied there by copy_mathjax below


def mathjax_es5() -> Path | None:
    """The folder of django-static-mathjax's MathJax 3 `es5` build (tex-chtml.js and what it loads), if installed.

    Found without importing the package (its `mathjax` module is a Django app).
    """
    spec = importlib.util.find_spec("mathjax")
    for location in (spec.submodule_search_locations or []) if spec else []:
        es5 = Path(location) / "static" / "mathjax" / "es5"
        if (es5 / "tex-chtml.js").is_file():
            return es5
    return None


def check_mathjax(app: Sphinx) -> None:
    """Stop an HTML build at its start when the local MathJax is missing, instead of shipping pages without math."""
    if app.builder.format == "html" and mathjax_es5() is None:
        raise ConfigError("the book needs a local MathJax 3: pip install django-static-mathjax "
                          "(or pip install -e '.[book]'); the build never loads MathJax from a CDN")


def copy_mathjax(app: Sphinx, exception: Exception | None) -> None:
    """Copy MathJax's es5 build to <html>/_static/mathjax/ after a successful HTML build."""
    es5 = mathjax_es5()
    if exception is None and app.builder.format == "html" and es5 is not None:
        shutil.copytree(es5, Path(app.outdir) / "_static" / "mathjax", dirs_exist_ok=True)


def keep_tagged_math_whole(app: Sphinx, doctree: nodes.document) -> None:
    r"""Give MathJax a tagged display equation with line breaks as written, not inside Sphinx's split environment.

    Sphinx wraps any display math that contains `\\` in `\begin{split}..\end{split}`; for an equation such as
    notebook 02's JSMA saliency map, whose `\\` sits inside `\begin{cases}` and which ends in `\tag{3}`, that
    makes MathJax fail ("\tag not allowed in split environment"), where Jupyter and GitHub render it. Such a block
    is passed through unwrapped (Sphinx's nowrap), between the display delimiters.
    """
    opening, closing = app.config.mathjax_display
    for node in list(doctree.findall(nodes.math_block)):
        text = node.astext()
        if "\\tag" in text and "\\\\" in text and not node.get("number") and not node.get("nowrap"):
            node["nowrap"] = node["no-wrap"] = True
            node.children = [nodes.Text(f"{opening}{text}{closing}")]


def unlink_problems(app: Sphinx, doctree: nodes.node, docname: str) -> None:
    r"""Show a docstring's markup error as its plain text, not as a link to an error message the page leaves out.

    docutils turns, e.g., `|f_k|` (undefined substitution) or a lone `*` into a "problematic" node that links to
    its system message. The build log lists each (scripts/build_book.py fails on any outside a docstring).
    """
    for node in list(doctree.findall(nodes.problematic)):
        node.replace_self(nodes.inline(node.rawsource, node.astext(), ids=node["ids"]))


PLAIN_LINE = re.compile(r"^(?!\.\. |:|>>>|[-*+] |\d+[.)] |\|)\S.*(?<!::)$")  # no markup: directive, field, list


def preformat_indented_blocks(app: Sphinx, what: str, name: str, obj: object, options: object,
                              lines: list[str]) -> None:
    """Show a docstring's plain-text layout as written (code, formulas, aligned tables), not as reST markup.

    The package's docstrings are plain text around Google-style sections (napoleon, which runs first, turns those
    into reST). Three layouts become literal blocks: an indented block after a blank line under a top-level
    paragraph; one right under a line ending in ":" ("text:" becomes reST's "text::", where reST would reject the
    indentation); and a markdown table (top-level lines starting with "|", which reST reads as line blocks).
    """
    i = 1
    while i < len(lines):
        line, previous = lines[i], lines[i - 1]
        if line.startswith("|") and not previous.strip():
            end = i
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            lines[i:end] = ["::", ""] + ["    " + row for row in lines[i:end]] + [""]
            i = end + 3  # past the table and the three lines added around it
            continue
        if not (line.strip() and line.startswith(" ")):
            i += 1
            continue
        converted = False
        if not previous.strip() and i >= 2 and PLAIN_LINE.match(lines[i - 2]):
            lines[i:i] = ["::", ""]
            i, converted = i + 2, True
        elif previous.endswith(":") and PLAIN_LINE.match(previous):
            lines[i - 1] = previous + ":"
            lines.insert(i, "")
            i, converted = i + 1, True
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
            i += 1  # the rest of this indented block, blank lines included
        if converted and i < len(lines) and lines[i - 1].strip():
            lines.insert(i, "")  # a literal block must end with a blank line


def setup(app: Sphinx) -> None:
    """Hook the local MathJax, the docstring and the two doctree fixes above into the build."""
    app.connect("builder-inited", check_mathjax)
    app.connect("build-finished", copy_mathjax)
    app.connect("autodoc-process-docstring", preformat_indented_blocks)
    app.connect("doctree-read", keep_tagged_math_whole)
    app.connect("doctree-resolved", unlink_problems)
