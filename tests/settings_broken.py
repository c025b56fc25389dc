"""The test project with a misconfigured ``POOLKIT``, for the subprocess tests: Django must
still start, ``manage.py check`` must report each problem, and only first use may raise."""

from testproject.settings_test import *  # noqa: F403

POOLKIT = {
    "DATABASES": {"default": {"pool_sise": 10, "max_overflow": -5}},
    # The sentinel password must never appear in any output.
    "ENGINES": {"analytics": {"url": "postgresql://reporter:s3ntinel-PW-9f2@warehouse:port/stats"}},
}
