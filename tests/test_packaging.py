"""A built wheel (``pip install .``, not only ``-e``) carries the Hydra configs as nnexp.conf."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_ships_the_configs_and_runs_from_them(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("nnexp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n for n in names if n.startswith("nnexp/conf/") and n.endswith(".yaml")}
    in_repo = {"nnexp/conf/" + str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml")}
    assert shipped == in_repo and "nnexp/conf/__init__.py" in names
    assert {"nnexp/report/page.html.j2", "nnexp/report/page.md.j2"} <= names  # the report page's templates
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = subprocess.run([sys.executable, "-c", "import nnexp.run, nnexp.conf; print(nnexp.conf.__file__)"],
                         capture_output=True, text=True, env=env, cwd=work)
    assert out.stdout.strip().startswith(str(site)), out.stdout + out.stderr
    run = subprocess.run([sys.executable, "-m", "nnexp.run", "dataset=digits", "epochs=1", "tracking=off"],
                         capture_output=True, text=True, env=env, cwd=work, timeout=120)
    assert run.returncode == 0 and "completed" in run.stdout, run.stderr
