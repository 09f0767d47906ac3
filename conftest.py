"""pytest set-up shared by tests/ and the doctests in hashrobust/ (run with --doctest-modules)."""
import os
from pathlib import Path

import pytest

_SHARED = Path(__file__).resolve().parent.parent / "shared" / "datasets"
if "HASHROBUST_DATA" not in os.environ and _SHARED.is_dir():  # the course workspace's offline copy
    os.environ["HASHROBUST_DATA"] = str(_SHARED)
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    """Docstring examples use the public API without imports, as a notebook's setup cell provides it."""
    import torch

    import hashrobust

    doctest_namespace.update(torch=torch, nn=torch.nn, hr=hashrobust,
                             **{name: getattr(hashrobust, name) for name in hashrobust.__all__})
