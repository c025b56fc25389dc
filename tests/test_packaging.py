"""``python -m build`` makes a wheel of the package alone and an sdist of the repository (less CI
and git files), silently; the metadata publishes no contributor extras and its links work on an
index page. ``scripts/release-check`` goes further (twine, check-wheel-contents, the installed
wheel serving the tutorial's site); CI runs it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
REPOSITORY = PYPROJECT["project"]["urls"]["Source"]
# In the repository, not in the sdist: CI's entry point and git's own file.
NOT_SHIPPED = {".ci/run", ".gitignore"}


def _repository_files() -> set[str]:
    """The files git tracks, or would (untracked but not ignored); run from an unpacked sdist,
    which has no git, the files its own manifest lists (SOURCES.txt)."""
    if (ROOT / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.split("\n")
    else:
        listed = (ROOT / "django_poolkit.egg-info" / "SOURCES.txt").read_text().split("\n")
    return {name for name in listed if name and (ROOT / name).is_file()
            and not name.startswith("django_poolkit.egg-info/")}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """The sdist, the wheel and the build's output, from a copy of the repository's files (a
    work tree's egg-info or __pycache__ cannot leak in)."""
    source = tmp_path_factory.mktemp("source")
    for name in _repository_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    return sdist, wheel, done.stdout + done.stderr


def test_the_wheel_holds_the_package_and_its_data(built: tuple[Path, Path, str]) -> None:
    _, wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {name.split("/")[0] for name in names} == {
        "django_poolkit", f"django_poolkit-{VERSION}.dist-info"}
    assert "django_poolkit/py.typed" in names
    # The dashboard's templates and static files travel with the package.
    for name in ("django_poolkit/templates/django_poolkit/dashboard/index.html",
                 "django_poolkit/templates/django_poolkit/dashboard/body.html",
                 "django_poolkit/templates/django_poolkit/admin/index.html",
                 "django_poolkit/templates/django_poolkit/dashboard/script.html",
                 "django_poolkit/templates/django_poolkit/dashboard/style.html",
                 "django_poolkit/contrib/prometheus/poolkit.rules.yml"):
        assert name in names


def test_the_sdist_is_the_repository_with_tests_docs_and_changelog(
        built: tuple[Path, Path, str]) -> None:
    sdist, _, _ = built
    with tarfile.open(sdist) as archive:
        names = {member.name.split("/", 1)[1] for member in archive.getmembers()
                 if member.isfile()}
    generated = {name for name in names
                 if name == "PKG-INFO" or name.startswith("django_poolkit.egg-info/")}
    assert names - generated == _repository_files() - NOT_SHIPPED
    for name in ("CHANGELOG.rst", "docs/tutorial.rst", "tests/test_fresh_project.py",
                 "testproject/settings.py", "scripts/replica"):
        assert name in names


def test_the_build_prints_no_manifest_warning(built: tuple[Path, Path, str]) -> None:
    *_, output = built
    assert [line for line in output.splitlines()
            if re.search(r"no (previously-included )?(files|directories) (found )?matching",
                         line)] == []


def test_contributor_tools_are_dependency_groups_not_published_extras(
        built: tuple[Path, Path, str]) -> None:
    _, wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        metadata = Parser().parsestr(
            archive.read(f"django_poolkit-{VERSION}.dist-info/METADATA").decode())
    assert sorted(metadata.get_all("Provides-Extra")) == [
        "binary", "health-check", "prometheus", "sqlite-async"]
    groups = PYPROJECT["dependency-groups"]
    assert set(groups) == {"dev", "bench", "docs"}
    for name, requirements in groups.items():
        projects = [re.split(r"[\[<>=!~ ]", requirement)[0] for requirement in requirements]
        assert len(projects) == len(set(projects)), (name, projects)
    requires = metadata.get_all("Requires-Dist")
    # django-environ 0.11.0 and 0.11.1 are yanked.
    assert "django-environ>=0.11.2" in requires


def test_the_metadata_links_and_the_readme_work_on_an_index_page(
        built: tuple[Path, Path, str]) -> None:
    _, wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        metadata = Parser().parsestr(
            archive.read(f"django_poolkit-{VERSION}.dist-info/METADATA").decode())
    urls = dict(value.split(", ", 1) for value in metadata.get_all("Project-URL"))
    assert set(urls) >= {"Homepage", "Documentation", "Source", "Changelog"}
    readme = metadata.get_payload()
    targets = [*re.findall(r"`[^`<]*<([^>]+)>`_", readme),
               *re.findall(r"^\.\. _[^:]+: (\S+)$", readme, re.M)]
    assert len(targets) > 10
    for target in [*targets, *urls.values()]:
        # Absolute, and naming this repository or a file of it that exists.
        if target == REPOSITORY:
            continue
        assert target.startswith(f"{REPOSITORY}/"), target
        path = re.sub(r"^(blob|tree)/main/", "", target.removeprefix(f"{REPOSITORY}/"))
        assert (ROOT / path).exists(), target


def test_the_version_is_one_in_the_package_metadata_and_changelog() -> None:
    import django_poolkit

    assert django_poolkit.__version__ == VERSION
    changelog = (ROOT / "CHANGELOG.rst").read_text()
    releases = re.findall(r"^(\S.*)\n=+\n", changelog, re.M)[1:]  # after the page's title
    assert releases[0].split()[0] == VERSION, releases
    assert len([release for release in releases if release.startswith(VERSION)]) == 1
