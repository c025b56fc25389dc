"""The test runner ``scripts/django-suite`` gives Django's ``runtests.py``: Django's
``DiscoverRunner`` that leaves out the excluded tests and writes every test's outcome to a
JSON file, so the comparison with the stock backend reads results, not console output.

``DJSUITE_EXCLUDE``: a file of test ids to leave out (first word of each line).
``DJSUITE_RESULT``: where to write ``{"tests": {id: outcome}, "run": n, "planned": n}``.
The file is written only when the run finished: a missing file means the runner crashed.
"""

import json
import os
import unittest
from typing import Any

from django.test.runner import (
    DiscoverRunner,
    ParallelTestSuite,
    RemoteTestResult,
    RemoteTestRunner,
)
from django.test.utils import iter_test_cases

OUTCOMES = ("ok", "skip", "xfail", "FAIL", "ERROR", "unexpected-success")


def read_ids(path: str | None) -> set[str]:
    """The first word of each non-blank, non-comment line."""
    if not path:
        return set()
    with open(path, encoding="utf-8") as lines:
        return {line.split()[0] for line in lines if line.strip() and not line.startswith("#")}


class RecordingResult(unittest.TextTestResult):
    """unittest's text result, also keeping one outcome per test id (the worst one)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outcomes: dict[str, str] = {}
        self.worker_test_id: str | None = None

    def poolkit_test_id(self, test: Any, test_id: str) -> None:
        """The id of the test a parallel worker started (see :class:`IdRemoteResult`)."""
        self.worker_test_id = test_id

    def stopTest(self, test: Any) -> None:
        super().stopTest(test)
        # Events outside a test (class fixtures) keep Django's own mapping.
        self.worker_test_id = None

    def _record(self, test: Any, outcome: str) -> None:
        key = self.worker_test_id or test.id()
        previous = self.outcomes.get(key)
        if previous is None or OUTCOMES.index(outcome) > OUTCOMES.index(previous):
            self.outcomes[key] = outcome

    def addSuccess(self, test: Any) -> None:
        super().addSuccess(test)
        self._record(test, "ok")

    def addError(self, test: Any, err: Any) -> None:
        super().addError(test, err)
        self._record(test, "ERROR")

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, err)
        self._record(test, "FAIL")

    def addSkip(self, test: Any, reason: str) -> None:
        super().addSkip(test, reason)
        self._record(test, "skip")

    def addExpectedFailure(self, test: Any, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._record(test, "xfail")

    def addUnexpectedSuccess(self, test: Any) -> None:
        super().addUnexpectedSuccess(test)
        self._record(test, "unexpected-success")

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            failure = issubclass(err[0], test.failureException)
            self._record(test, "FAIL" if failure else "ERROR")


class IdRemoteResult(RemoteTestResult):
    """A parallel worker's result that also sends the id of each test it starts. The main
    process maps events to tests by position (``testsRun - 1``), and on Django 6.1 with
    Python 3.12 that position drifts inside a class (failures of the pool tests came back
    under the names of tests two places before them); the id it sends cannot drift."""

    def startTest(self, test: Any) -> None:
        super().startTest(test)
        self.events.append(("poolkit_test_id", self.test_index, test.id()))


class IdRemoteRunner(RemoteTestRunner):
    resultclass = IdRemoteResult


class IdParallelTestSuite(ParallelTestSuite):
    runner_class = IdRemoteRunner


class RecordingRunner(DiscoverRunner):
    """``DiscoverRunner`` minus the excluded tests, recording outcomes (see the module)."""

    parallel_test_suite = IdParallelTestSuite

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.excluded = read_ids(os.environ.get("DJSUITE_EXCLUDE"))
        self.planned = 0

    def load_tests_for_label(self, label: Any, discover_kwargs: Any) -> Any:
        tests = super().load_tests_for_label(label, discover_kwargs)
        kept = [test for test in iter_test_cases(tests) if test.id() not in self.excluded]
        return self.test_suite(kept)

    def get_resultclass(self) -> Any:
        return RecordingResult

    def run_suite(self, suite: Any, **kwargs: Any) -> Any:
        self.planned = suite.countTestCases()
        result = super().run_suite(suite, **kwargs)
        path = os.environ.get("DJSUITE_RESULT")
        if path:
            with open(path, "w", encoding="utf-8") as out:
                json.dump({"tests": result.outcomes, "run": result.testsRun,
                           "planned": self.planned}, out, indent=0, sort_keys=True)
        return result
