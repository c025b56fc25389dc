"""Plain helpers the tests import (no tests and no fixtures here: fixtures live in the
``conftest.py`` files, so pytest finds them and no test module imports another)."""
