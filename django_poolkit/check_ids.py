"""Every system check id poolkit reports, defined once.

Ids are API: never reused, each documented in docs/checks.rst. A section's
validator, the backend's rules and the wiring checks import their ids from here, so one
module shows which numbers are taken and what each means.
"""

from __future__ import annotations

# POOLKIT itself: DEFAULTS, DATABASES, ENGINES, ENV_PREFIX and the POOLKIT_* variables.
E_NOT_A_DICT = "poolkit.E001"  # a section of POOLKIT has the wrong type
E_UNKNOWN_KEY = "poolkit.E002"  # a key poolkit does not know (with did-you-mean)
E_BAD_VALUE = "poolkit.E003"  # a value of the wrong type or out of range
E_UNKNOWN_ALIAS = "poolkit.E004"  # POOLKIT["DATABASES"] names an alias DATABASES lacks
E_CONFLICT = "poolkit.E005"  # options that cannot be combined
E_ENVIRONMENT = "poolkit.E006"  # a POOLKIT_* environment variable is unknown or invalid
E_ENGINE_URL = "poolkit.E007"  # an ENGINES entry has no usable url
W_URL_SECRET = "poolkit.W001"  # noqa: S105 - a password in an ENGINES url, shown by reports

# The pooled ORM backend (django_poolkit.db.checks).
E_CONN_MAX_AGE = "poolkit.E010"  # CONN_MAX_AGE is not 0 on a pooled alias
E_NATIVE_POOL = "poolkit.E011"  # OPTIONS["pool"] (Django's own pool) on a pooled alias
E_CELERY_REUSE = "poolkit.E012"  # CELERY_DB_REUSE_MAX with a pooled alias
W_PGBOUNCER_ROLE = "poolkit.W010"  # pgbouncer="transaction" with OPTIONS["assume_role"]
W_PGBOUNCER_TIMEOUT = "poolkit.W011"  # pgbouncer set and statement_timeout not None
W_PGBOUNCER_RESET = "poolkit.W012"  # pgbouncer="transaction" with a reset other than rollback
W_PGBOUNCER_OVERRIDE = "poolkit.W013"  # pgbouncer="transaction" overrides an OPTIONS value
W_PGBOUNCER_OPTIONS = "poolkit.W014"  # pgbouncer set and OPTIONS["options"] given
W_APP_NOT_INSTALLED = "poolkit.W015"  # the pooled backend without django_poolkit installed

# POOLKIT["ROUTING"] and its wiring.
E_ROUTING_TYPE = "poolkit.E020"  # a routing section or entry has the wrong type
E_ROUTING_UNKNOWN_KEY = "poolkit.E021"  # a key poolkit does not know (with did-you-mean)
E_ROUTING_BAD_VALUE = "poolkit.E022"  # a value of the wrong type or out of range
E_ROUTING_UNKNOWN_ALIAS = "poolkit.E023"  # a cluster names an alias DATABASES lacks
E_ROUTING_DUPLICATE = "poolkit.E024"  # one alias plays two roles
E_ROUTING_CONFLICT = "poolkit.E025"  # options that cannot be combined
E_ROUTING_NOT_POSTGRES = "poolkit.E026"  # a cluster member is not a PostgreSQL database
W_NO_ROUTER = "poolkit.W020"  # replicas declared, no PrimaryReplicaRouter installed
W_NO_MIDDLEWARE = "poolkit.W021"  # replicas routed, PoolkitMiddleware not installed
W_NO_MIDDLEWARE_TIMEOUT = "poolkit.W022"  # pools serve requests, no PoolkitMiddleware: a 500
W_UNPOOLED_REPLICA = "poolkit.W023"  # a routed replica on Django's stock backend, not pooled

# POOLKIT["HEALTH"].
E_HEALTH_NOT_A_DICT = "poolkit.E030"  # POOLKIT["HEALTH"] is not a dict
E_HEALTH_UNKNOWN_KEY = "poolkit.E031"  # an unknown key (with did-you-mean)
E_HEALTH_BAD_VALUE = "poolkit.E032"  # a value of the wrong type or out of range
E_HEALTH_UNKNOWN_ALIAS = "poolkit.E033"  # names an alias DATABASES lacks
E_HEALTH_CONFLICT = "poolkit.E034"  # health settings that contradict each other

# POOLKIT["DEPLOYMENT"] and the connection budget.
E_DEPLOYMENT_NOT_A_DICT = "poolkit.E040"  # POOLKIT["DEPLOYMENT"] is not a dict
E_DEPLOYMENT_UNKNOWN_KEY = "poolkit.E041"  # an unknown key
E_DEPLOYMENT_BAD_VALUE = "poolkit.E042"  # a value of the wrong type or out of range
E_DEPLOYMENT_UNKNOWN_POOL = "poolkit.E043"  # "databases" names a pool nobody configured
W_BUDGET_EXCEEDED = "poolkit.W040"  # the pools can open more than the server accepts
W_BUDGET_UNKNOWN = "poolkit.W041"  # max_connections could not be read
W_THREADS_OVER_POOL = "poolkit.W042"  # more request threads than a pool has connections
W_BOUNCER_BUDGET = "poolkit.W043"  # behind PgBouncer, a limit that refuses connections is hit

# The staff dashboard (django_poolkit.dashboard).
# poolkit.W050 (retired): admin before django_poolkit hid the admin's link to the dashboard;
# the link no longer depends on the order of INSTALLED_APPS.
