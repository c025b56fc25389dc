"""Run Django's own test suite on django_poolkit's pooled backend (``scripts/django-suite``).

Downloads the sdist of the installed Django (it carries ``tests/runtests.py``) into
``.cache/django-suite/``, runs the labels of ``labels.txt`` with ``--parallel 2`` on the real
PostgreSQL (``DATABASE_URL``), and compares the failures with the stock backend's recorded run
of the same labels (``baseline/django-X.Y.txt``). It fails on a failure the stock backend does
not have unless ``allowed.txt`` lists it (a feature the pooled backend replaces on purpose), and
when the runner crashes. ``excluded.txt``: tests left out of both runs (timing-sensitive).

``--record-stock`` runs the stock backend instead and rewrites the baseline file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import django

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = REPO / ".cache" / "django-suite"


def read_list(path: Path) -> dict[str, str]:
    """``test id  reason`` lines (``#`` comments and blank lines skipped)."""
    entries = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            test_id, _, reason = line.partition(" ")
            entries[test_id] = reason.strip()
    return entries


def labels() -> list[str]:
    return [word for line in (HERE / "labels.txt").read_text(encoding="utf-8").splitlines()
            if not line.startswith("#") for word in line.split()]


def django_tests_dir(version: str) -> Path:
    """The ``tests/`` directory of Django ``version``'s sdist, downloaded once."""
    target = CACHE / f"django-{version}"
    if (target / "tests" / "runtests.py").exists():
        return target / "tests"
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as download:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--no-binary", ":all:", "--dest", download, f"django=={version}"],
                       check=True)
        (archive,) = Path(download).glob("*.tar.gz")
        with tarfile.open(archive) as tar:
            tar.extractall(download, filter="data")
        (unpacked,) = (path for path in Path(download).iterdir() if path.is_dir())
        shutil.rmtree(target, ignore_errors=True)
        unpacked.rename(target)
    return target / "tests"


def run(kind: str, tests_dir: Path, parallel: int, selected: list[str]) -> dict[str, object]:
    """One runtests.py run; the recorded outcomes, or SystemExit on a crash."""
    result_file = Path(tempfile.mkstemp(prefix=f"django-suite-{kind}-", suffix=".json")[1])
    result_file.unlink()
    env = {  # not POOLKIT_*: poolkit reads those as settings
        **os.environ,
        "DJSUITE_BACKEND": kind,
        "DJSUITE_RESULT": str(result_file),
        "DJSUITE_EXCLUDE": str(HERE / "excluded.txt"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "runtests.py",
               "--settings", "poolkit_suite_settings", "--parallel", str(parallel),
               "--noinput", "-v", "1", *selected]
    print(f"django-suite: {kind} backend, Django {django.get_version()}, "
          f"{len(selected)} labels, --parallel {parallel}", flush=True)
    started = time.monotonic()
    completed = subprocess.run(command, cwd=tests_dir, env=env, check=False)
    took = time.monotonic() - started
    if not result_file.exists():
        raise SystemExit(f"django-suite: the {kind} run CRASHED (runtests.py exit "
                         f"{completed.returncode}, no results written) after {took:.0f}s")
    data: dict[str, object] = json.loads(result_file.read_text(encoding="utf-8"))
    result_file.unlink()
    data["seconds"] = round(took)
    tests: dict[str, str] = data["tests"]  # type: ignore[assignment]
    counts = {outcome: sum(1 for value in tests.values() if value == outcome)
              for outcome in sorted(set(tests.values()))}
    data["counts"] = counts
    print(f"django-suite: {kind}: {data['run']} run of {data['planned']} planned, {counts}, "
          f"{took:.0f}s", flush=True)
    return data


def failures(data: dict[str, object]) -> set[str]:
    tests: dict[str, str] = data["tests"]  # type: ignore[assignment]
    return {test_id for test_id, outcome in tests.items()
            if outcome in ("FAIL", "ERROR", "unexpected-success")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record-stock", action="store_true",
                        help="run the stock backend and rewrite the baseline of this version")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--save", metavar="FILE", help="also write the run's outcomes (JSON)")
    parser.add_argument("labels", nargs="*", help="run these labels only (development)")
    options = parser.parse_args()
    version = django.get_version()
    series = ".".join(version.split(".")[:2])
    baseline_file = HERE / "baseline" / f"django-{series}.txt"
    tests_dir = django_tests_dir(version)
    selected = options.labels or labels()
    if options.record_stock:
        data = run("stock", tests_dir, options.parallel, selected)
        if options.save:
            Path(options.save).write_text(json.dumps(data, indent=0), encoding="utf-8")
        lines = [f"# Django {version}'s own suite on Django's stock PostgreSQL backend: the "
                 "failures of", f"# labels.txt, recorded by scripts/django-suite "
                 f"--record-stock ({data['counts']}, {data['seconds']}s).",
                 *sorted(failures(data))]
        if not options.labels:
            baseline_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
            print(f"django-suite: wrote {baseline_file.relative_to(REPO)}")
        else:
            print("\n".join(lines))
        return 0
    if not baseline_file.exists():
        raise SystemExit(f"django-suite: no stock baseline for Django {series} "
                         f"({baseline_file.relative_to(REPO)}); record it with "
                         "scripts/django-suite --record-stock")
    recorded = baseline_file.read_text(encoding="utf-8")
    if f"Django {version}'s" not in recorded:
        print(f"django-suite: note: the baseline was recorded on another Django {series} "
              "release; re-record it if stock failures changed", flush=True)
    stock = set(read_list(baseline_file))
    allowed = read_list(HERE / "allowed.txt")
    data = run("pooled", tests_dir, options.parallel, selected)
    if options.save:
        Path(options.save).write_text(json.dumps(data, indent=0), encoding="utf-8")
    pooled = failures(data)
    ran = set(data["tests"])  # type: ignore[arg-type]
    new = sorted(pooled - stock - set(allowed))
    for test_id in sorted(pooled & set(allowed)):
        print(f"django-suite: allowed: {test_id}: {allowed[test_id]}")
    fixed = sorted((stock & ran) - pooled)
    if fixed:
        print(f"django-suite: {len(fixed)} stock failure(s) pass on the pooled backend: "
              + ", ".join(fixed))
    if new:
        print(f"django-suite: FAILED: {len(new)} failure(s) the stock backend does not have:")
        for test_id in new:
            print(f"  {test_id}")
        return 1
    print("django-suite: OK: no failure beyond the stock backend's and the allowed list")
    return 0


if __name__ == "__main__":
    sys.exit(main())
