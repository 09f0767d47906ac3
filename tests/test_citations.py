"""The repository cites Liu et al. (ASP-DAC 2018) only for what is known of it.

This project knows the paper's abstract and the first author's related public code, not the paper's body
(docs/protocol.md, "1. The paper" and "What each claim rests on"). A statement about the paper therefore
cites the abstract, the authors' code or the reconstructed protocol (docs/protocol.md), never a section
number of the paper. Other papers' sections (HashedNets Sec. 4, Goodfellow et al. Sec. 4, Croce & Hein
Sec. 4, ...) are known and stay cited by section.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BINARY = (".png", ".jpg", ".jpeg", ".gif", ".pdf", ".pt", ".pth", ".zip", ".npz", ".npy", ".gz", ".pkl")

_SEC = r"Sec(?:tion|s?\.)?\s?(?:\d|\")"  # "Sec. 4", "Sec.4", "Section 5", "Secs. 4-5", Sec. "hash compression"
# Each pattern is a way of citing THIS paper by section; none matches another paper's "<name> ..., Sec. N".
PAPER_SECTION = [
    # "Liu et al. Sec. 5", "Liu et al. (ASP-DAC 2018), Sec. 3", "Liu et al., ASP-DAC 2018, Sec. 4",
    # "... Adversarial Attacks* (ASP-DAC 2018), Sec. 4", "Liu et al. (ASP-DAC 2018), the headline of Sec. 6",
    # "Liu et al. (ASP-DAC 2018), abstract and Sec. 6"
    re.compile(r"(?:Liu et al\.?|ASP-DAC\s2018\)?)[\s,:;]*(?:\(ASP-DAC\s2018\)|ASP-DAC\s2018)?[\s,:;]*"
               r"(?:(?:the\s+)?\w+\s+(?:of|and)\s+)?" + _SEC),
    # "paper Sec. 6", "(Paper: Sec. 4)", "the paper's Sec. 5", "the paper, Sec. 4"
    re.compile(r"\b[Pp]aper(?:'s)?\s*[:,]?\s*" + _SEC),
    # a table cell that starts with a bare section number: the "paper" column of a notebook table
    re.compile(r"\|\s*" + _SEC),
    # "Sec. 6's headline", "the headline of Sec. 6"
    re.compile(r"\bSec(?:tion|\.)\s?\d+'s\b|\bheadline\s+of\s+" + _SEC),
    # topics that only this paper has: "multi-factor analysis, Sec. 5", "gradient inhibition (Sec. 6)"
    re.compile(r"(?:multi-factor(?:\s+adversarial)?\s+(?:analysis|attack)|gradient\s+inhibition|hash\s+compression)"
               r"\"?[\s,:(]+(?:in\s+)?" + _SEC, re.IGNORECASE),
]


def paper_section_citations(text: str) -> list[str]:
    """The places in `text` that cite Liu et al. (ASP-DAC 2018) by section number.

    >>> paper_section_citations("Paper: Liu et al. Sec. 5 (MNIST and CIFAR-10).")
    ['Liu et al. Sec. 5']
    >>> paper_section_citations("Paper: Goodfellow et al. ICLR 2015, Sec. 4; HashedNets Sec. 4, eq. 4-6.")
    []
    >>> paper_section_citations("Liu et al. (ASP-DAC 2018), abstract; Croce & Hein ICML 2020, Sec. 4 (DLR loss).")
    []
    """
    hits = []
    for pattern in PAPER_SECTION:
        hits.extend(match.group(0).strip() for match in pattern.finditer(text))
    return hits


def _tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    files = []
    for name in out.decode().split("\0"):
        path = ROOT / name
        if name and not name.lower().endswith(BINARY) and path.is_file():
            files.append(path)
    return files


def _text(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None
    if path.suffix == ".ipynb":  # markdown and code as the reader sees them, not JSON-escaped
        try:
            cells = json.loads(text)["cells"]
        except (ValueError, KeyError):
            return text
        return "\n".join("".join(cell.get("source", [])) for cell in cells)
    return text


def test_no_section_citations_of_the_paper():
    """No tracked text file (README.md included) cites the paper by section: its body is not known."""
    offenders = []
    for path in _tracked_text_files():
        if path.name == Path(__file__).name:  # this file quotes the forbidden forms on purpose
            continue
        text = _text(path)
        if text is None:
            continue
        for hit in paper_section_citations(text):
            offenders.append(f"{path.relative_to(ROOT)}: {hit!r}")
    assert not offenders, (
        "Liu et al. (ASP-DAC 2018) is cited by section number, but only its abstract and the authors' code "
        "are known: cite 'the abstract', 'the authors' code' or 'the reconstructed protocol, "
        "docs/protocol.md §N' instead.\n" + "\n".join(offenders))


@pytest.mark.parametrize("detector_input, expected", [
    ("Paper: Liu et al. (ASP-DAC 2018), Sec. 5 (\"multi-factor adversarial attack\")", 1),
    ("Liu et al. ASP-DAC 2018, Sec. 4 (eps 0.3, alpha 0.03, 40 steps)", 1),
    ("(gradient inhibition, paper Sec. 6)", 1),
    ("cannot be saturated away (Paper: Sec. 4).", 1),
    ("Adversarial Attacks* (ASP-DAC 2018), Sec. 4: adversarial attacks adapted", 1),
    ("| 02 | [adversarial examples](x.ipynb) | Sec. 4 | run FGSM |", 1),
    ("Liu et al. (ASP-DAC 2018), the headline of Sec. 6 (GI lowers", 1),
    ("(the paper's multi-factor analysis, Sec. 5).", 1),
    ("Paper: Liu et al. (ASP-DAC 2018), abstract and Sec. 6: GI lowers", 1),
    ("Paper: HashedNets (Chen, Wilson, Tyree, Weinberger, Chen; ICML 2015), Sec. 4,", 0),
    ("Paper: Croce & Hein ICML 2020, Sec. 3 and Algorithm 1 (APGD), Sec. 4 (DLR loss).", 0),
    ("Athalye, Carlini, Wagner, ICML 2018, arXiv:1802.00420, Sec. 4.3).", 0),
    ("Papernot et al. 2016 (JSMA); Liu et al. (ASP-DAC 2018), the authors' code (10 images x 9 targets).", 0),
    ("the mechanism described in section 6, since both inflate the logits", 0),
    ("| 01 | [HashedNets](01.ipynb) | authors' code; HashedNets Sec. 4, eq. 4-6 | virtual vs real |", 0),
])
def test_detector(detector_input, expected):
    """The detector catches the forms this repository used and leaves other papers' sections alone."""
    assert bool(paper_section_citations(detector_input)) == bool(expected)


LABELS = ("abstract", "authors' code", "reconstructed")


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("0*.ipynb")), ids=lambda p: p.name)
def test_notebook_paper_line_names_its_basis(notebook):
    """Each notebook's first cell says what it rests on: the abstract, the authors' code, the reconstruction."""
    first = "".join(json.loads(notebook.read_text(encoding="utf-8"))["cells"][0]["source"])
    match = re.search(r"\*\*Paper:\*\*(.*?)(?:\n\s*\n|\Z)", first, re.DOTALL)
    assert match, f"{notebook.name}: the first cell has no '**Paper:**' paragraph"
    paragraph = match.group(1)
    assert any(label in paragraph for label in LABELS), (
        f"{notebook.name}: the **Paper:** paragraph names none of {LABELS}: {paragraph!r}")
