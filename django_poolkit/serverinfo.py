"""SQL that asks a PostgreSQL server what it is: shared by the health probes and ``poolstatus``,
so both report a server's role and lag the same way."""

from __future__ import annotations

__all__ = ["ROLE_AND_LAG_SQL"]

#: One round trip: ``pg_is_in_recovery()`` and the replay lag in seconds (NULL on a primary).
#: Replay lag is the age of the last replayed transaction, which keeps growing while an idle
#: primary sends nothing, so a standby that has replayed everything it received counts as 0 s
#: behind.
ROLE_AND_LAG_SQL = """
SELECT pg_is_in_recovery(),
       CASE WHEN NOT pg_is_in_recovery() THEN NULL
            WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0
            ELSE EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8
       END
"""
