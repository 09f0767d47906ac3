"""Export the README's tour figures: the first PNG output of each notebook cell tagged "tour".

Run after `make notebooks` (the Makefile does): the README's figures are then the notebooks' own stored
outputs, never a separate drawing that could drift from them.

    .venv/bin/python scripts/tour_figures.py            # notebooks/*.ipynb -> docs/tour/<notebook>.png
"""
from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def tour_figures(notebooks: list[Path], out_dir: Path) -> list[Path]:
    """Write docs/tour/<notebook stem>.png for every notebook with a cell tagged "tour"; return the paths."""
    written = []
    for path in notebooks:
        cells = json.loads(path.read_text())["cells"]
        tagged = [c for c in cells if "tour" in c.get("metadata", {}).get("tags", [])]
        pngs = [o["data"]["image/png"] for c in tagged for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
        if tagged and not pngs:
            sys.exit(f"{path.name}: the cell tagged 'tour' has no PNG output; execute the notebook first")
        if pngs:
            out = out_dir / f"{path.stem}.png"
            out.write_bytes(base64.b64decode(pngs[0]))
            written.append(out)
    return written


if __name__ == "__main__":
    out_dir = REPO / "docs" / "tour"
    out_dir.mkdir(parents=True, exist_ok=True)
    for written in tour_figures(sorted((REPO / "notebooks").glob("[0-9]*.ipynb")), out_dir):
        print(f"wrote {written.relative_to(REPO)}")
