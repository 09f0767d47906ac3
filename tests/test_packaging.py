"""The set-up a newcomer runs: pyproject, environment.yml, Makefile, README and CI agree."""
import json
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

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


def test_environment_yml_and_make_install_the_same_torchattacks():
    """The attack tests' peer: `make install` and environment.yml's command install the same pin, without deps."""
    pin = re.search(r'--no-deps "?(torchattacks==[0-9.]+)', (ROOT / "Makefile").read_text()).group(1)
    assert f"pip install --no-deps {pin}" in (ROOT / "environment.yml").read_text().splitlines()[0]


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


# --- what every install route carries (the routes themselves: `make install-test`) -----------------------------

def _shipped_files() -> set[str]:
    """The repository files an install must carry: the zoo and the committed results the notebooks read."""
    files = {f"checkpoints/{p.name}" for p in (ROOT / "data" / "checkpoints").iterdir() if p.is_file()}
    for dataset in ("mnist", "cifar10"):
        files |= {f"results/{dataset}/{p.name}" for p in (ROOT / "results" / dataset).iterdir() if p.is_file()}
    return files


def _build(kind: str, out: Path) -> Path:
    """The wheel or the sdist of this checkout, built with the venv's own setuptools (no download)."""
    subprocess.run([sys.executable, "-m", "build", f"--{kind}", "--no-isolation", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True)
    return next(out.glob("*.whl" if kind == "wheel" else "*.tar.gz"))


def test_wheel_carries_the_zoo_and_the_results_and_no_cache(tmp_path):
    with zipfile.ZipFile(_build("wheel", tmp_path)) as wheel:
        names = set(wheel.namelist())
    shipped = {n.removeprefix("hashrobust/_shipped/") for n in names if n.startswith("hashrobust/_shipped/")}
    assert shipped == _shipped_files()
    assert "hashrobust/_shipped/checkpoints/MANIFEST.json" in names and len(shipped) > 30
    assert not [n for n in names if "cache" in n or n.endswith((".npz", ".zip")) or n.startswith("data/")]


def test_sdist_carries_what_its_tests_need(tmp_path):
    with tarfile.open(_build("sdist", tmp_path)) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    tracked = subprocess.run(["git", "ls-files", "conftest.py", "tests", "notebooks", "scripts", "benchmarks", "docs",
                              "data/checkpoints", "results/mnist", "results/cifar10", ".ci", "Makefile"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert len(tracked) > 60
    assert set(tracked) <= names, sorted(set(tracked) - names)
    assert not [n for n in names if "__pycache__" in n or n.startswith("data/cache")]


def test_an_installed_package_reads_its_own_copies_and_caches_downloads_outside(monkeypatch, tmp_path):
    from hashrobust import data
    monkeypatch.setattr(data, "_in_source_checkout", lambda: False)
    monkeypatch.delenv("HASHROBUST_DATA", raising=False)
    monkeypatch.setenv("HASHROBUST_CACHE", str(tmp_path / "cache"))
    package = Path(hashrobust.__file__).parent
    assert data.shipped_path("data", "checkpoints") == package / "_shipped" / "checkpoints"
    assert data.shipped_path("results", "mnist", "cells.csv") == package / "_shipped" / "results" / "mnist" / "cells.csv"
    assert data.data_root() == tmp_path / "cache" / "datasets"  # a download never lands in site-packages
    with pytest.raises(ValueError, match="ships only data/checkpoints"):
        data.shipped_path("notebooks")
    monkeypatch.setattr(data, "_in_source_checkout", lambda: True)
    assert data.shipped_path("data", "checkpoints") == ROOT / "data" / "checkpoints"
    assert data.data_root() == ROOT / "data"


def test_every_notebook_installs_the_package_when_opened_alone():
    url = _pyproject()["project"]["urls"]["Repository"]
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        first_code = next(c for c in cells if c["cell_type"] == "code")  # before anything imports hashrobust
        source = "".join(first_code["source"])
        assert 'find_spec("hashrobust") is None' in source, path.name
        assert f'os.environ.get("HASHROBUST_PIP", "git+{url}")' in source, path.name
        assert "%pip install --quiet {source}" in source, path.name


# --- the Makefile's guards ---------------------------------------------------------------------------------------

def _old_python() -> str | None:
    """Some Python below 3.11 on this machine (pyenv's), or None."""
    for candidate in sorted(Path.home().glob(".pyenv/versions/3.[0-9].*/bin/python3")) + sorted(
            Path.home().glob(".pyenv/versions/3.10.*/bin/python3")):
        if subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0:
            return str(candidate)
    return None


def test_make_refuses_a_python_below_311_with_one_message(tmp_path):
    old = _old_python()
    if old is None:
        pytest.skip("no Python below 3.11 on this machine")
    done = subprocess.run(["make", "-s", f"{tmp_path}/v/bin/python", f"VENV={tmp_path}/v", f"PYTHON={old}"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0
    assert "hashrobust needs Python 3.11 or newer" in done.stderr and f"{old} is Python 3." in done.stderr
    assert not (tmp_path / "v").exists()


def test_make_rebuilds_a_broken_venv(tmp_path):
    venv = tmp_path / "v"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(tmp_path / "gone" / "python3")  # its interpreter was removed
    done = subprocess.run(["make", "-n", "install", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True)
    assert f"{venv} is broken (its python does not run): removing it" in done.stdout
    assert not venv.exists()
    assert f"-m venv {venv}" in done.stdout  # and the dry run goes on to make it again


# --- the repository stands on its own ----------------------------------------------------------------------------

def test_no_committed_file_refers_to_a_document_outside_the_repository():
    briefs = re.compile(r"\b(PAPER|COURSE|DESIGN|STYLE)\.md\b")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix in (".png", ".pt", ".zip", ".npz") or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if briefs.search(line):
                offenders.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not offenders, "\n".join(offenders)
