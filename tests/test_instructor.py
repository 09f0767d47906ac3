"""docs/instructor.md, the instructor kit, against the notebooks it describes and docs/references.bib.

Fast and offline: it reads markdown, JSON and BibTeX, and runs no notebook and no model. Each check ties the
page to its sources, so the page goes stale loudly: a notebook or an exercise added or renamed, a time table
that no longer adds up or no longer matches the notebooks' length, a glossary term dropped, a cited key missing
from the .bib, a model answer pointing at a notebook that is gone.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import math
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGE = DOCS / "instructor.md"
BIB = DOCS / "references.bib"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))

# The glossary's terms the kit promises (its brief, point 5), each a bold term of a glossary bullet.
GLOSSARY_TERMS = [
    "virtual weight", "real weight", "bucket", "sign hash", "compression ratio", "HashedNets", "white-box",
    "transfer attack", "FGSM", "BIM", "PGD", "JSMA-F", "JSMA-Z", "C&W", "APGD", "AutoAttack", "success rate",
    "robust accuracy", "Wilson interval", "gradient inhibition", "logit margin", "softmax saturation",
    "gradient masking", "EOT", "adaptive attack", "jpeg-q75 stand-in",
]
# Works the references must hold, by arXiv identifier (or, without one, by key): id -> expected year.
REQUIRED_ARXIV = {
    "1802.05193": "2018",  # Liu et al., ASP-DAC 2018
    "1504.04788": "2015",  # Chen et al., HashedNets, ICML 2015
    "1412.6572": "2015",   # Goodfellow, Shlens, Szegedy, ICLR 2015 (FGSM)
    "1607.02533": "2016",  # Kurakin, Goodfellow, Bengio (BIM)
    "1706.06083": "2018",  # Madry et al., ICLR 2018 (PGD)
    "1511.07528": "2016",  # Papernot et al., EuroS&P 2016 (JSMA)
    "1608.04644": "2017",  # Carlini & Wagner, S&P 2017
    "1802.00420": "2018",  # Athalye, Carlini & Wagner, ICML 2018
    "1902.06705": "2019",  # Carlini et al. 2019
    "2003.01690": "2020",  # Croce & Hein, ICML 2020 (AutoAttack)
    "1912.00049": "2020",  # Andriushchenko et al., ECCV 2020 (Square)
    "1511.04599": "2016",  # Moosavi-Dezfooli et al., CVPR 2016 (DeepFool)
    "1511.04508": "2016",  # Papernot et al., S&P 2016 (defensive distillation)
}
REQUIRED_KEYS = {"wilson1927probable": "1927"}  # Wilson's score interval (JASA 1927) has no arXiv identifier

NOTEBOOK_LINK = re.compile(r"\]\((\.\./notebooks/[^)\s#]+\.ipynb)(?:#[^)]*)?\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


# --- reading the page ----------------------------------------------------------------------------------------------

@functools.cache
def _text() -> str:
    return PAGE.read_text(encoding="utf-8")


@functools.cache
def _sections() -> dict[str, str]:
    """The page's level-2 sections: heading text -> body (up to the next level-2 heading), code fences ignored."""
    prose = FENCE.sub(lambda match: "\n" * match.group(0).count("\n"), _text())
    sections, heading, lines = {}, None, []
    for line in prose.splitlines():
        if line.startswith("## "):
            if heading is not None:
                sections[heading] = "\n".join(lines)
            heading, lines = line[3:].strip(), []
        elif heading is not None:
            lines.append(line)
    if heading is not None:
        sections[heading] = "\n".join(lines)
    return sections


def _section(prefix: str) -> str:
    matches = [body for heading, body in _sections().items() if heading.lower().startswith(prefix.lower())]
    assert len(matches) == 1, f"expected one section whose heading starts with {prefix!r}, found {len(matches)}"
    return matches[0]


def _subsections(body: str) -> dict[str, str]:
    """Level-3 subsections of a section body: heading -> text."""
    parts = re.split(r"^### (.+)$", body, flags=re.MULTILINE)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def _table_rows(body: str) -> list[list[str]]:
    """The cells of each row of the markdown tables in `body`, header rows and separators left out."""
    rows = []
    for line in body.splitlines():
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if all(re.fullmatch(r":?-{3,}:?", cell) for cell in cells):
            rows.pop()  # the line above the separator was the header
        else:
            rows.append(cells)
    return rows


# --- reading the notebooks -----------------------------------------------------------------------------------------

@functools.cache
def _cells(notebook: Path) -> tuple[dict, ...]:
    return tuple(json.loads(notebook.read_text(encoding="utf-8"))["cells"])


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _is_exercise(cell: dict) -> bool:
    return cell["cell_type"] == "code" and "exercise" in cell.get("metadata", {}).get("tags", [])


def _exercise_functions(notebook: Path) -> list[str]:
    """The `def name(` of every code cell tagged "exercise", in order."""
    return [name for cell in _cells(notebook) if _is_exercise(cell)
            for name in re.findall(r"^def (\w+)\(", _source(cell), re.MULTILINE)]


def _markdown_words(notebook: Path) -> int:
    return sum(len(_source(cell).split()) for cell in _cells(notebook) if cell["cell_type"] == "markdown")


def _reading_code_cells(notebook: Path) -> int:
    return sum(1 for cell in _cells(notebook) if cell["cell_type"] == "code" and not _is_exercise(cell))


def _time_table() -> dict[str, list[int]]:
    """The time table's notebook rows: notebook file name -> [words, reading, exercises, total]."""
    return {Path(NOTEBOOK_LINK.findall(cells[0])[0]).name: [int(cell) for cell in cells[1:5]]
            for cells in _table_rows(_section("Student time")) if NOTEBOOK_LINK.findall(cells[0])}


# --- reading the .bib ----------------------------------------------------------------------------------------------

@functools.cache
def _bib_entries() -> dict[str, dict[str, str]]:
    """key -> {field: value, "type": entry type}; fails on an unbalanced entry or a repeated key."""
    text = BIB.read_text(encoding="utf-8")
    entries: dict[str, dict[str, str]] = {}
    for match in re.finditer(r"@(\w+)\s*\{\s*([^,\s]+)\s*,", text):
        depth, end = 1, match.end()
        while depth and end < len(text):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        assert depth == 0, f"entry {match.group(2)} of {BIB.name} has unbalanced braces"
        body = text[match.end():end - 1]
        fields = {name.lower(): value.strip() for name, value in
                  re.findall(r"(\w+)\s*=\s*(\{(?:[^{}]|\{[^{}]*\})*\}|\d+)", body)}
        fields = {name: value[1:-1] if value.startswith("{") else value for name, value in fields.items()}
        key = match.group(2)
        assert key not in entries, f"{BIB.name} defines {key} twice"
        entries[key] = {"type": match.group(1).lower(), **fields}
    return entries


# --- the tests -----------------------------------------------------------------------------------------------------

def test_the_page_is_in_the_books_toctree_and_uses_plain_myst():
    toctree_entries = re.findall(r"^docs/\w+$", (DOCS / "index.md").read_text(), re.MULTILINE)
    assert "docs/instructor" in toctree_entries
    text = _text()
    assert text.startswith("# ") and text.count("\n# ") == 0  # one title
    for extension_only in ("{cite", "{bibliography}", "{bibtex", "{glossary}", "{term}"):
        assert extension_only not in text, f"{extension_only} needs a Sphinx extension the book does not load"


def test_every_relative_link_resolves():
    prose = FENCE.sub("", _text())
    targets = [target for target in re.findall(r"\]\(([^)\s]+)\)", prose)
               if not re.match(r"^(https?:|mailto:|#)", target)]
    assert targets
    for target in targets:
        assert (DOCS / target.split("#")[0]).is_file(), f"broken link: {target}"
    anchors = {re.sub(r"[^\w\- ]", "", heading.lower()).strip().replace(" ", "-") for heading in _sections()}
    for anchor in re.findall(r"\]\(#([^)]+)\)", prose):
        assert anchor in anchors, f"no level-2 heading for #{anchor}"


def test_the_syllabus_covers_every_notebook_and_assigns_every_exercise():
    syllabus = _section("Syllabus")
    sessions = [heading for heading in _subsections(syllabus) if heading.startswith("Session ")]
    assert 4 <= len(sessions) <= 6, sessions
    assert len(NOTEBOOKS) >= 7
    for notebook in NOTEBOOKS:
        assert f"../notebooks/{notebook.name}" in syllabus, f"{notebook.name} is in no session"
        for name in _exercise_functions(notebook):
            assert f"`{name}`" in syllabus, f"exercise {name} ({notebook.name}) is assigned in no session"


def test_the_self_check_has_five_to_eight_questions_and_an_answer_each():
    questions = _subsections(_section("Prerequisites"))
    body = next(text for heading, text in questions.items() if heading.lower().startswith("self-check"))
    asked = re.findall(r"^(\d+)\. ", body, re.MULTILINE)
    answered = re.findall(r"^(\d+)\. ", _section("Answers to the self-check"), re.MULTILINE)
    assert 5 <= len(asked) <= 8
    assert asked == answered == [str(i) for i in range(1, len(asked) + 1)]


def test_the_time_table_covers_every_notebook_and_adds_up():
    rows = _table_rows(_section("Student time"))
    by_notebook = _time_table()
    assert sorted(by_notebook) == [notebook.name for notebook in NOTEBOOKS]
    total = next(cells for cells in rows if "Total" in cells[0])
    columns = list(zip(*by_notebook.values()))
    assert [int(cell) for cell in total[1:5]] == [sum(column) for column in columns]
    for notebook in NOTEBOOKS:
        words, reading, exercises, minutes = by_notebook[notebook.name]
        assert reading + exercises == minutes, notebook.name
        actual = _markdown_words(notebook)
        assert abs(words - actual) <= 0.1 * actual, f"{notebook.name}: {words} words stated, {actual} now"
        # the stated method: markdown at 150-200 words per minute, plus at most a minute per code cell
        assert actual / 200 <= reading <= actual / 150 + _reading_code_cells(notebook) + 1, notebook.name
        exercise_cells = sum(1 for cell in _cells(notebook) if _is_exercise(cell))
        assert exercises >= 10 * exercise_cells, f"{notebook.name}: under 10 minutes an exercise"
        # the stated rule, words / 175 and half a minute a code cell, each rounded up (a cell or two of slack:
        # the notebooks change under this page)
        rule = math.ceil(words / 175) + math.ceil(_reading_code_cells(notebook) / 2)
        assert abs(reading - rule) <= 1, f"{notebook.name}: reading {reading} min, the stated rule gives {rule}"


def test_the_exercise_breakdown_adds_up_to_the_table():
    body = _section("Student time")
    table = {name[:2]: row[2] for name, row in _time_table().items()}
    breakdown = dict(re.findall(r"^- (\d\d): (.+?)(?=^- \d\d:|^\S|\Z)", body, re.MULTILINE | re.DOTALL))
    assert sorted(breakdown) == sorted(table)
    for number, text in breakdown.items():
        minutes = [int(m) for m in re.findall(r"(?:`|\)) (\d+)", text)]
        assert sum(minutes) == table[number], f"notebook {number}: {minutes} do not add up to {table[number]}"


def test_every_exercise_is_mapped_to_a_learning_outcome():
    rows = _table_rows(_section("Learning outcomes"))
    assert len(rows) >= 10
    assessed = " ".join(cells[-1] for cells in rows)
    for notebook in NOTEBOOKS:
        functions = _exercise_functions(notebook)
        assert functions, f"{notebook.name} has no exercise cell"
        for name in functions:
            assert f"`{name}`" in assessed, f"exercise {name} ({notebook.name}) assesses no outcome"
    for cells in rows:
        links = NOTEBOOK_LINK.findall(" ".join(cells))
        assert links, f"an outcome names no notebook: {cells}"
        assert all((DOCS / link).is_file() for link in links)
    answers = set(re.findall(r"^### (A\d+)\.", _section("Model answers"), re.MULTILINE))
    for cited in re.findall(r"\bA\d+\b", assessed):
        assert cited in answers, f"the outcomes cite model answer {cited}, which does not exist"


def test_the_glossary_defines_every_listed_term_once():
    entries = re.findall(r"^- \*\*(.+?)\*\*:? (.+?)(?=^- |^#|\Z)", _section("Glossary"), re.MULTILINE | re.DOTALL)
    terms = [term for term, _ in entries]
    assert len(terms) == len(set(terms)), "a term is defined twice"
    missing = [term for term in GLOSSARY_TERMS if term not in terms]
    assert not missing, f"the glossary lacks {missing}"
    for term, definition in entries:
        assert 30 <= len(" ".join(definition.split())) <= 700, f"{term}: a definition of 1-3 sentences"


def test_the_two_rates_are_defined_as_evaluation_py_defines_them():
    module_doc = " ".join((ROOT / "hashrobust" / "evaluation.py").read_text().split()).lower()
    glossary = {term: " ".join(text.split()).lower() for term, text in
                re.findall(r"^- \*\*(.+?)\*\*:? (.+?)(?=^- |^#|\Z)", _section("Glossary"), re.MULTILINE | re.DOTALL)}
    for term, phrases in {"success rate": ["own clean prediction", "needs no labels", "misclassified to begin with"],
                          "robust accuracy": ["true label", "never above clean", "worst case per example"]}.items():
        for phrase in phrases:
            assert phrase in module_doc, f"evaluation.py no longer says {phrase!r}: update the glossary with it"
            assert phrase in glossary[term], f"the glossary's {term} does not say {phrase!r}"


def test_the_bib_parses_and_holds_every_required_work():
    entries = _bib_entries()
    assert len(entries) >= len(REQUIRED_ARXIV) + len(REQUIRED_KEYS)
    for key, fields in entries.items():
        assert re.fullmatch(r"[a-z][a-z0-9]*", key), key
        assert {"author", "title", "year"} <= set(fields), f"{key} lacks author, title or year"
        assert re.fullmatch(r"(18|19|20)\d\d", fields["year"]), key
        assert "doi" not in fields and "pages" not in fields  # only facts we are sure of
    by_arxiv = {fields["eprint"]: fields for fields in entries.values() if "eprint" in fields}
    for identifier, year in REQUIRED_ARXIV.items():
        assert identifier in by_arxiv, f"no entry for arXiv:{identifier}"
        assert by_arxiv[identifier]["year"] == year, identifier
    for key, year in REQUIRED_KEYS.items():
        assert entries[key]["year"] == year


def test_the_references_list_is_the_bib_and_every_cited_key_exists():
    references = _section("References")
    listed = re.findall(r"^- `([^`]+)`:", references, re.MULTILINE)
    assert len(listed) == len(set(listed))
    assert set(listed) == set(_bib_entries()), "the page's reference list and references.bib differ"
    assert "](references.bib)" in references  # the .bib is linked (a download in the book)
    for key in re.findall(r"\[@([\w:-]+)\]", _text()):
        assert key in _bib_entries(), f"[@{key}] is cited but not in {BIB.name}"
    for identifier in REQUIRED_ARXIV:
        assert f"arXiv:{identifier}" in references, identifier


def test_every_model_answer_names_an_existing_notebook():
    answers = _subsections(_section("Model answers"))
    assert len(answers) >= 15
    numbers = [int(re.match(r"A(\d+)\.", heading).group(1)) for heading in answers]
    assert numbers == list(range(1, len(answers) + 1)), "model answers are numbered A1, A2, ... in order"
    for heading, body in answers.items():
        links = NOTEBOOK_LINK.findall(body)
        assert links, f"{heading}: names no notebook"
        for link in links:
            assert (DOCS / link).is_file(), f"{heading}: {link} does not exist"
        assert body.count("\n\n") >= 1 and len(body.split()) >= 60, f"{heading}: too short for a model answer"


def test_every_exercise_that_asks_why_has_a_model_answer():
    answers = _section("Model answers")
    for notebook in NOTEBOOKS:
        cells, task = _cells(notebook), ""
        for cell in cells:
            if cell["cell_type"] == "markdown":
                task = _source(cell)
            elif _is_exercise(cell):
                if re.search(r"\?|\b[Ee]xplain\b|\b[Ww]hy\b", task):
                    names = re.findall(r"^def (\w+)\(", _source(cell), re.MULTILINE)
                    assert any(f"`{name}`" in answers for name in names), (
                        f"{notebook.name}: the exercise of {names} asks a question with no model answer")
                task = ""


def test_the_paper_is_not_cited_by_section():
    spec = importlib.util.spec_from_file_location("_citations", ROOT / "tests" / "test_citations.py")
    citations = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(citations)
    assert citations.paper_section_citations(_text()) == []
