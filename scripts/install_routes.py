"""Check the install routes other than `make` (`make install-test`; CI runs it after `make test`).

Each route installs into a fresh virtual environment outside the repository, the way a user or a
course platform would, and then uses the package from outside the repository:

- **wheel, one notebook opened alone, newest Python (3.13).** The environment gets what a Colab or
  JupyterHub kernel already has (torch, torchvision, a Jupyter kernel) and not hashrobust. One notebook
  is copied into an empty folder and executed with nbconvert; its first code cell finds hashrobust
  missing and installs it with `%pip install` from $HASHROBUST_PIP (here: the wheel just built; on
  Colab: the repository). Then a smoke test from outside: `hashrobust --version`, load the shipped zoo,
  FGSM on 200 MNIST test images; and nothing was written into site-packages beyond the wheel's files.
- **sdist, Python 3.12.** `pip install <sdist>[dev]` (an isolated build, as `pip install .` and
  `pip install git+URL` do), the same smoke test, then tests from the unpacked sdist itself (its
  conftest.py, fixtures, zoo and results must all be in it).

The repository's own route (`make test`, Python 3.11, editable install) is the full suite.
Prints one line per route with its install time and size; exit status 1 on the first failure.

    HASHROBUST_DATA=/abs/path/to/datasets .venv/bin/python scripts/install_routes.py [--keep DIR]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "00_start_here.ipynb"
PINS = [line for line in (REPO / "constraints.txt").read_text().split("\n") if line and not line.startswith("#")]
KERNEL_STACK = ["ipykernel", "nbconvert"]  # what a hosted notebook already runs on, besides torch
SDIST_TESTS = ["tests/test_zoo.py", "tests/test_data.py"]  # need conftest.py, the fixtures, the zoo: an sdist's own
SMOKE = """
import sys, hashrobust as hr
from hashrobust import reports, zoo
assert "site-packages" in hr.__file__, hr.__file__
assert zoo.CHECKPOINT_DIR.is_dir() and "site-packages" in str(zoo.CHECKPOINT_DIR), zoo.CHECKPOINT_DIR
model = hr.load_pretrained("mnist", "mlp3", ratio=8)
test = hr.load_dataset("mnist", "test").subset(200)
accuracy = hr.evaluate(model, test)
success = hr.success_rate(model, hr.FGSM(model, eps=0.3), test.images, test.labels)["success"]
rows = reports.read_results("mnist", "analysis")
print(f"python {sys.version.split()[0]}: mlp3 r8 accuracy {accuracy:.3f}, FGSM(0.3) success {success:.3f}, "
      f"{len(rows)} committed analysis rows")
assert accuracy > 0.95 and success > 0.8 and len(rows) > 100
"""


class RouteFailed(Exception):
    pass


def run(command: list[str], cwd: Path | None = None, env: dict | None = None, quiet: bool = True) -> str:
    """Run `command`; raise RouteFailed with its output's tail if it fails."""
    done = subprocess.run(command, cwd=cwd, env=env, text=True, capture_output=True)
    if done.returncode != 0:
        raise RouteFailed(f"`{' '.join(map(str, command))}` exited {done.returncode}:\n"
                          f"{(done.stdout + done.stderr)[-4000:]}")
    if not quiet:
        print(done.stdout.strip())
    return done.stdout


def find_python(version: str) -> str:
    """A working interpreter of `version` ("3.13"): on PATH, or one that pyenv installed."""
    root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates = [f"python{version}", *sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}")),
                  f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
    for candidate in candidates:
        try:
            out = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return candidate
    raise RouteFailed(f"no working python{version} (tried {', '.join(candidates)}); install it, e.g. with pyenv")


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


def new_venv(python: str, folder: Path) -> Path:
    run([python, "-m", "venv", str(folder)])
    pip = [str(folder / "bin" / "python"), "-m", "pip"]
    run(pip + ["install", "--quiet", "--upgrade", "pip"])
    return folder / "bin"


def site_packages(bin_dir: Path) -> Path:
    return Path(run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).strip())


def check_site_packages_clean(bin_dir: Path) -> None:
    """Only the wheel's own files under site-packages/hashrobust (no cache, no download), and no data/ folder."""
    site = site_packages(bin_dir)
    if (site / "data").exists():
        raise RouteFailed(f"{site / 'data'} exists: something wrote into site-packages")
    record = next(site.glob("hashrobust-*.dist-info")) / "RECORD"
    listed = {line.split(",")[0] for line in record.read_text().splitlines()}
    extra = [str(p.relative_to(site)) for p in (site / "hashrobust").rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and str(p.relative_to(site)) not in listed]
    if extra:
        raise RouteFailed(f"files written into the installed package: {extra[:10]}")


def build(dist: Path) -> tuple[Path, Path]:
    """The wheel and the sdist of this checkout (python -m build, without isolation: the venv's setuptools)."""
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(REPO)])
    return next(dist.glob("*.whl")), next(dist.glob("*.tar.gz"))


def wheel_notebook_alone(work: Path, wheel: Path, env: dict) -> dict:
    bin_dir = new_venv(find_python("3.13"), work / "venv-wheel")
    start = time.perf_counter()
    run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", *PINS, *KERNEL_STACK])
    alone = work / "alone"
    alone.mkdir()
    shutil.copy(NOTEBOOK, alone)
    run([str(bin_dir / "python"), "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
         "--ExecutePreprocessor.timeout=600", "--output", "executed.ipynb", NOTEBOOK.name],
        cwd=alone, env=env | {"HASHROBUST_PIP": str(wheel)})
    seconds = time.perf_counter() - start
    cells = json.loads((alone / "executed.ipynb").read_text())["cells"]
    errors = [o for c in cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    if errors:
        raise RouteFailed(f"{NOTEBOOK.name} raised: {errors[0]['ename']}: {errors[0]['evalue']}")
    first_code = next(c for c in cells if c["cell_type"] == "code")
    if 'find_spec("hashrobust") is None' not in "".join(first_code["source"]):
        raise RouteFailed(f"{NOTEBOOK.name}: its first code cell is not the install cell")
    smoke(bin_dir, work, env)
    check_site_packages_clean(bin_dir)
    return {"route": "wheel into a Colab-like env, notebook alone (Python 3.13)", "seconds": seconds,
            "venv_mb": size_mb(work / "venv-wheel"), "artifact_mb": wheel.stat().st_size / 1e6}


def sdist_route(work: Path, sdist: Path, env: dict) -> dict:
    bin_dir = new_venv(find_python("3.12"), work / "venv-sdist")
    start = time.perf_counter()
    run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", *PINS, f"{sdist}[dev]"])
    seconds = time.perf_counter() - start
    smoke(bin_dir, work, env)
    with tarfile.open(sdist) as archive:
        archive.extractall(work / "unpacked", filter="data")
    source = next((work / "unpacked").iterdir())
    out = run([str(bin_dir / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", *SDIST_TESTS],
              cwd=source, env=env)
    print(f"  tests from the unpacked sdist: {out.strip().splitlines()[-1]}")
    return {"route": "sdist, isolated build, its own tests (Python 3.12)", "seconds": seconds,
            "venv_mb": size_mb(work / "venv-sdist"), "artifact_mb": sdist.stat().st_size / 1e6}


def smoke(bin_dir: Path, work: Path, env: dict) -> None:
    """From a folder outside the repository: the console script, the zoo, FGSM, the committed results."""
    elsewhere = work / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    print("  " + run([str(bin_dir / "hashrobust"), "--version"], cwd=elsewhere, env=env).strip())
    print("  " + run([str(bin_dir / "python"), "-c", SMOKE], cwd=elsewhere, env=env).strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    data = os.environ.get("HASHROBUST_DATA")
    if not data or not Path(data).is_absolute() or not Path(data).is_dir():
        print(f"install_routes: set HASHROBUST_DATA to the absolute path of the datasets folder (got {data!r})")
        return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="hashrobust-routes-"))
    work.mkdir(parents=True, exist_ok=True)
    # outside the repository, with its own cache: a route must not lean on the checkout or the user's cache
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "HASHROBUST_CACHE")}
    # MPLCONFIGDIR: matplotlib's font list names font files inside its venv; a list written by these
    # throwaway venvs must not be left for the user's own matplotlib to read
    env |= {"HASHROBUST_CACHE": str(work / "cache"), "MPLCONFIGDIR": str(work / "matplotlib"),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    try:
        wheel, sdist = build(work / "dist")
        rows = []
        for route in (lambda: wheel_notebook_alone(work, wheel, env), lambda: sdist_route(work, sdist, env)):
            rows.append(route())
            r = rows[-1]
            print(f"ok: {r['route']}: install {r['seconds']:.0f} s, venv {r['venv_mb']:,.0f} MB, "
                  f"package file {r['artifact_mb']:.1f} MB")
    except RouteFailed as failure:
        print(f"install_routes FAILED: {failure}")
        return 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
