"""The set-up a newcomer runs: pyproject, environment.yml, Makefile, README and CI agree."""
import re
import tomllib
from pathlib import Path

import hashrobust

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"torch": "pytorch"}  # conda-forge's name for a PyPI package, where they differ


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement.strip(), maxsplit=1)[0].lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _conda_dependencies() -> dict[str, str]:
    deps = {}
    text = (ROOT / "environment.yml").read_text()
    for line in text[text.index("dependencies:"):].splitlines():
        match = re.match(r"^  - ([A-Za-z0-9_.-]+)(.*)$", line)
        if match and match.group(1) not in ("python", "pip"):
            deps[match.group(1).lower()] = match.group(2).strip()
    return deps


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    project = _pyproject()["project"]
    wanted = {CONDA_NAMES.get(_name(r), _name(r)): r for r in project["dependencies"]}
    wanted |= {_name(r): r for r in project["optional-dependencies"]["dev"]}
    conda = _conda_dependencies()
    assert set(conda) == set(wanted)
    for name, requirement in wanted.items():  # the same lower bounds, too
        assert conda[name] == requirement[len(_name(requirement)):].strip(), name


def test_environment_yml_installs_the_package_editable_with_python_311():
    text = (ROOT / "environment.yml").read_text()
    assert "python=3.11" in text and "- -e .[dev]" in text


def test_pyproject_metadata():
    project = _pyproject()["project"]
    assert project["requires-python"] == ">=3.11"
    assert project["scripts"]["hashrobust"] == "hashrobust.cli:command"
    assert {_name(r) for r in project["dependencies"]} == {
        "torch", "torchvision", "numpy", "matplotlib", "ipywidgets", "jupyterlab", "tqdm"}
    assert {_name(r) for r in project["optional-dependencies"]["dev"]} >= {"pytest", "nbval", "hypothesis"}
    assert project["version"] == hashrobust.__version__


def test_readme_opens_with_the_two_commands_and_ci_runs_the_same_test_command():
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, re.S).group(1).split()
    assert first_block == ["make", "test", "make", "lab"]
    assert "HASHROBUST_DATA" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_public_api_is_listed_and_importable():
    assert len(hashrobust.__all__) == len(set(hashrobust.__all__))
    for name in hashrobust.__all__:
        assert getattr(hashrobust, name) is not None, name


def test_no_dataset_files_are_in_the_repository():
    for path in ROOT.rglob("*"):
        if ".venv" in path.parts or "cache" in path.parts or ".git" in path.parts:
            continue
        assert not re.search(r"ubyte|cifar-10-batches|cifar10-jpeg|\.jpg$", path.name), path


# --- LICENSE, CITATION.cff, CHANGELOG.md ---------------------------------------------------------------------

def _citation() -> dict:
    """CITATION.cff as YAML (PyYAML where installed, else its top-level `key: value` lines only)."""
    text = (ROOT / "CITATION.cff").read_text()
    try:
        import yaml
    except ImportError:
        return {m.group(1): m.group(2).strip().strip('"\'') for m in re.finditer(r"^([a-z-]+):[ \t]*(.*)$", text, re.M)}
    return yaml.safe_load(text)


def test_citation_cff_names_this_version_and_the_paper():
    citation = _citation()
    assert citation["cff-version"] == "1.2.0"
    assert citation["title"] == "hashrobust"
    assert str(citation["version"]) == hashrobust.__version__ == _pyproject()["project"]["version"]
    assert citation["license"] == _pyproject()["project"]["license"]
    text = (ROOT / "CITATION.cff").read_text()
    assert "the hashrobust authors" in text and "arXiv:1802.05193" in text
    if isinstance(citation.get("authors"), list):  # parsed as YAML: the structure CFF 1.2.0 requires
        assert citation["authors"] == [{"name": "the hashrobust authors"}]
        assert citation["message"]
        (paper,) = citation["references"]
        assert paper["type"] == "conference-paper" and paper["year"] == 2018
        assert " ".join(paper["title"].split()) == ("Security Analysis and Enhancement of Model Compressed Deep "
                                                    "Learning Systems under Adversarial Attacks")
        assert [a["family-names"] for a in paper["authors"]] == ["Liu", "Liu", "Liu", "Wang", "Jin", "Wen"]
        assert "ASP-DAC 2018" in paper["collection-title"]


def test_license_file_is_the_license_pyproject_declares():
    declared = _pyproject()["project"]["license"]
    assert declared == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.splitlines()[0] == "MIT License"
    assert "Copyright (c) 2026 the hashrobust authors" in text
    assert "Permission is hereby granted, free of charge" in text


def test_changelog_has_an_unreleased_section():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog")
    assert "## [Unreleased]" in text
