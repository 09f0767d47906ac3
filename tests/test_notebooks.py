"""The course's notebooks keep the rules of the course (docs/protocol.md and the README's "The course"); nbval runs their cells.

These checks read the committed .ipynb files: executed, thin, skeleton complete, exercises with solutions,
CIFAR-10 numbers flagged as the stand-in. nbval (in the same `make test`) re-executes every cell and
compares the cells tagged nbval-check-output.
"""
import ast
import importlib.util
import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _is_exercise(cell: dict) -> bool:
    return "exercise" in cell.get("metadata", {}).get("tags", [])


def test_the_nine_notebooks_are_there_in_order():
    assert [p.name[:3] for p in PATHS] == [f"{i:02d}_" for i in range(9)]
    assert PATHS[3].name == "03_attacking_compressed_models.ipynb"  # what `make browser-test` opens


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_committed_executed_with_no_errors_or_stderr(path):
    for cell in _cells(path):
        if cell["cell_type"] != "code" or _is_exercise(cell):
            continue
        assert cell["execution_count"] is not None, f"{path.name}: a cell was never run:\n{_source(cell)[:200]}"
        kinds = [(o["output_type"], o.get("name")) for o in cell["outputs"]]
        assert ("error", None) not in kinds and ("stream", "stderr") not in kinds, f"{path.name}: {_source(cell)[:200]}"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_cells_are_thin_and_define_nothing_outside_exercises(path):
    for cell in _cells(path):
        if cell["cell_type"] != "code":
            continue
        source = _source(cell)
        if _is_exercise(cell):
            assert "NotImplementedError" in source, f"{path.name}: an exercise stub must raise NotImplementedError"
            continue
        assert len(source.splitlines()) <= 15, f"{path.name}: a cell over 15 lines:\n{source[:300]}"
        tree = ast.parse("\n".join(l for l in source.splitlines() if not l.lstrip().startswith(("%", "!"))))
        defined = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert not defined, f"{path.name}: logic belongs in the package, not in a notebook cell:\n{source[:300]}"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_skeleton_goals_runtime_exercises_summary_and_pinned_numbers(path):
    cells = _cells(path)
    markdown = "\n".join(_source(c) for c in cells if c["cell_type"] == "markdown")
    for part in ("Learning goals", "Expected runtime", "Summary", "$"):  # "$": the equations are LaTeX
        assert part in markdown, f"{path.name} has no {part!r}"
    assert "Paper" in _source(cells[0]), f"{path.name}: the first cell names the paper and its section"
    exercises = [c for c in cells if _is_exercise(c)]
    assert 2 <= len(exercises) <= 4, f"{path.name}: {len(exercises)} exercises"
    pinned = [c for c in cells if c["cell_type"] == "code" and "nbval-check-output" in c["metadata"].get("tags", [])]
    assert not [c for c in cells if "NBVAL_" in _source(c)], f"{path.name}: nbval markers are cell tags, not comments"
    assert len(pinned) >= 1 and all(c["outputs"] for c in pinned), f"{path.name}: pin its headline numbers"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_every_exercise_has_a_doctested_solution_of_the_same_name(path):
    solution = NOTEBOOKS / "solutions" / f"{path.stem}.py"
    assert solution.is_file(), f"no {solution.relative_to(NOTEBOOKS.parent)}"
    spec = importlib.util.spec_from_file_location(f"solution_{path.stem[:2]}", solution)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for cell in (c for c in _cells(path) if _is_exercise(c)):
        for node in ast.parse(_source(cell)).body:
            if isinstance(node, ast.FunctionDef):
                solved = getattr(module, node.name, None)
                assert callable(solved), f"{solution.name} lacks {node.name}"
                assert ">>> " in (solved.__doc__ or ""), f"{solution.name}: {node.name} needs a doctest with a value"


@pytest.mark.parametrize("path", [p for p in PATHS if "cifar10" in p.read_text()], ids=lambda p: p.stem)
def test_cifar10_numbers_carry_the_stand_in_note(path):
    markdown = "\n".join(_source(c) for c in _cells(path) if c["cell_type"] == "markdown")
    assert "> **Note.**" in markdown and "stand-in" in markdown, f"{path.name} shows CIFAR-10 without the note"


def test_widget_cells_leave_a_static_png_for_readers_without_a_kernel():
    shown = 0
    for path in PATHS:
        for cell in _cells(path):
            if cell["cell_type"] == "code" and ".show()" in _source(cell):
                shown += 1
                kinds = [set(o.get("data", {})) for o in cell["outputs"]]
                assert kinds and "image/png" in kinds[0], f"{path.name}: the explorer's first output must be a PNG"
    assert shown == 6  # Ratio-, Adversarial-, CompressionAttack-, Inhibition-, RobustnessCurve-, ShootoutExplorer
