"""Sphinx configuration of the django-poolkit manual (built by ``scripts/docs``).

autodoc imports the package, so Django is set up first with the demo project's settings on
SQLite: nothing connects while the docs build.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
os.environ.setdefault("DATABASE_URL", "sqlite:///:memory:")

import django  # noqa: E402

django.setup()

import django_poolkit  # noqa: E402

project = "django-poolkit"
author = "django-poolkit developers"
copyright = "2026, django-poolkit developers"  # noqa: A001
release = django_poolkit.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.graphviz",
    "sphinx.ext.viewcode",
]
# docs/bench/*.rst are fragments bench/run writes; bench.rst and the README include them.
exclude_patterns = ["_build", "bench"]
root_doc = "index"
html_theme = "furo"
html_title = f"django-poolkit {release}"
html_static_path: list[str] = []
graphviz_output_format = "svg"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_default_options = {"members": True, "show-inheritance": True}
# -n (nitpicky) resolves every cross-reference. Types of the libraries poolkit builds on have no
# inventory here (intersphinx needs the network), so references into them are named, not linked.
nitpick_ignore_regex = [
    ("py:class", r"(sqlalchemy|django|psycopg|psycopg_pool|collections|typing|_?contextvars)\..*"),
    ("py:class", r"(datetime|enum|types|logging|threading|_thread|asyncio)\..*"),
    ("py:exc", r"(sqlalchemy|django|psycopg)\..*"),
    ("py:class", r"(Any|Self|T|Callable|Iterator|Mapping|Sequence|Literal)"),
    # Type variables and private helpers named in signatures.
    ("py:class", r"django_poolkit\..*\.(F|T|_[A-Za-z]\w*)"),
]
