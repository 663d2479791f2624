"""The notebooks run against a small store made here (a digits sweep and a TPE study)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("nb")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    for args in (["nnexp.run", "-m", "dataset=digits", "epochs=3", "eta=0.1,0.5,2.0"],
                 ["nnexp.study", "study=tpe", "dataset=digits", "study.epochs=3", "study.n_trials=5",
                  "study.stop_after=search"]):
        out = subprocess.run([sys.executable, "-m", *args], cwd=root, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    return root, env


def test_notebooks_are_committed_without_outputs():
    assert {p.name for p in NOTEBOOKS} == {"explore_runs.ipynb", "study_analysis.ipynb"}
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        assert all(not c.get("outputs") and not c.get("execution_count") for c in cells if c["cell_type"] == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(small_store, path, monkeypatch):
    root, env = small_store
    for key in ("MLFLOW_TRACKING_URI",):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("NNEXP_OPTUNA_STORAGE", f"sqlite:///{root / 'optuna.db'}")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend renders the plots
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(root)}}).execute()
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2
    for image in images:  # the plots really rendered: not blank, more than one colour drawn
        import base64
        import io

        import matplotlib.image

        pixels = matplotlib.image.imread(io.BytesIO(base64.b64decode(image["data"]["image/png"])), format="png")
        rgb = pixels[..., :3]
        drawn = (rgb < 0.9).any(axis=-1).mean()  # share of pixels that are not (near) white
        assert 0.01 < drawn < 0.9 and len({tuple(p) for p in rgb.reshape(-1, 3)[::97].round(2)}) > 3
