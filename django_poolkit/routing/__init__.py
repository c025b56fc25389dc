"""Primary/replica routing internals: the ``POOLKIT["ROUTING"]`` settings, the shared replica
state, SQLAlchemy sessions that follow the routing, and test databases with a real replica.
The public entry points stay where users import them: :mod:`django_poolkit.routers` and
:mod:`django_poolkit.pinning`."""
