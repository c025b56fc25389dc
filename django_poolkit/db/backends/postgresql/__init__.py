"""``django_poolkit.db.backends.postgresql``: Django's PostgreSQL backend, pooled.

Set ``DATABASES[alias]["ENGINE"]`` to this module's name; see :mod:`.base`.
"""
