"""django-poolkit: SQLAlchemy connection pools as a first-class, observable part of Django.

Importing this package has no side effects: nothing reads settings or connects until a
function below is called.
"""

try:
    import psycopg  # noqa: F401  (the driver of every pool: fail here, with the fix)
except ImportError as error:
    raise ImportError(
        f"django-poolkit needs psycopg 3 and a libpq, and importing psycopg failed ({error}). "
        "Install psycopg's wheels, which bring their own libpq: pip install "
        "'django-poolkit[binary]' (or 'psycopg[binary]'); or install libpq on the host "
        "(Debian: apt-get install libpq5).") from error

from .api import adispose_all, all_pool_stats, dispose_all, get_async_engine, get_engine, pool_stats
from .engines.sharing import unshared
from .exceptions import (
    ClientTimeout,
    PoolkitConfigurationError,
    PoolkitError,
    PoolTimeout,
    SharingError,
    UnknownAlias,
)
from .pinning import use_primary
from .routing.sessions import read_session, write_session
from .stats import PoolStats

__version__ = "0.1.0"

__all__ = [
    "ClientTimeout",
    "PoolStats",
    "PoolTimeout",
    "PoolkitConfigurationError",
    "PoolkitError",
    "SharingError",
    "UnknownAlias",
    "__version__",
    "adispose_all",
    "all_pool_stats",
    "dispose_all",
    "get_async_engine",
    "get_engine",
    "pool_stats",
    "read_session",
    "unshared",
    "use_primary",
    "write_session",
]
