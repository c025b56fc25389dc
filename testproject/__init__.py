"""A runnable Django project that uses django-poolkit: the demo and the test suite's project."""
