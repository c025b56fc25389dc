"""django-poolkit's side-by-side benchmark (``bench/run``; see docs/bench.rst).

Not part of the installed package: the harness, the bench Django app and settings, the plain
WSGI ceiling and the micro-benchmarks live here so that the published figures can be
reproduced with one command on a fresh machine.
"""
