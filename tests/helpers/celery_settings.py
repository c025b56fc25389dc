"""Settings of the Celery worker that ``tests/test_celery.py`` starts: the test project's, plus
the broker and the queue of that run (``CELERY_TEST_*`` variables: a ``POOLKIT_*`` name would
be refused as an unknown pool setting)."""

import os

from testproject.settings_test import *  # noqa: F403

CELERY_BROKER_URL = os.environ["CELERY_TEST_BROKER"]
CELERY_RESULT_BACKEND = os.environ["CELERY_TEST_BROKER"]
CELERY_TASK_DEFAULT_QUEUE = os.environ["CELERY_TEST_QUEUE"]
CELERY_RESULT_EXPIRES = 600
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
if os.environ.get("CELERY_TEST_DB_REUSE_MAX"):
    CELERY_DB_REUSE_MAX = int(os.environ["CELERY_TEST_DB_REUSE_MAX"])
# Four threads in the threads pool: enough connections for all of them, none to spare.
POOLKIT = {"DATABASES": {"default": {"pool_size": 4, "max_overflow": 0, "pool_timeout": 5}}}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_poolkit": {"handlers": ["console"], "level": "INFO"}},
}
