"""``python -m build`` makes an sdist and a wheel that contain the package and nothing else."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_sdist_and_wheel_contain_only_the_package(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (sdist,) = tmp_path.glob("*.tar.gz")
    (wheel,) = tmp_path.glob("*.whl")
    with tarfile.open(sdist) as archive:
        sdist_names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    with zipfile.ZipFile(wheel) as archive:
        wheel_names = set(archive.namelist())

    top_sdist = {name.split("/")[0] for name in sdist_names}
    assert top_sdist == {"django_poolkit", "django_poolkit.egg-info", "PKG-INFO",
                         "README.rst", "LICENSE", "pyproject.toml", "setup.cfg"}
    top_wheel = {name.split("/")[0] for name in wheel_names}
    assert top_wheel == {"django_poolkit", "django_poolkit-0.1.0.dev0.dist-info"}
    assert "django_poolkit/py.typed" in wheel_names
    assert "django_poolkit/py.typed" in sdist_names
    # The dashboard's templates and static files travel with the package.
    for name in ("django_poolkit/templates/django_poolkit/dashboard/index.html",
                 "django_poolkit/templates/django_poolkit/dashboard/body.html",
                 "django_poolkit/templates/admin/index.html",
                 "django_poolkit/static/django_poolkit/dashboard/dashboard.js",
                 "django_poolkit/static/django_poolkit/dashboard/dashboard.css",
                 "django_poolkit/contrib/prometheus/poolkit.rules.yml"):
        assert name in wheel_names
        assert name in sdist_names
