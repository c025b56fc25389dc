"""tests/settings_broken.py with the metrics URL mounted: ``manage.py check`` imports the
URLconf, which registers the metrics collector."""

from tests.settings_broken import *  # noqa: F403

ROOT_URLCONF = "tests.urls_metrics"
