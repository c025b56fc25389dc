"""The bench table. Created and filled by the harness (``bench.pg.prepare_database``), not
by migrations, so every configuration (and the plain WSGI app) reads the same rows."""

from __future__ import annotations

from django.db import models


class Item(models.Model):
    """One row: the primary key, a short text and a group for the counting query."""

    name = models.CharField(max_length=40)
    group = models.IntegerField(db_index=True)

    objects: models.Manager[Item] = models.Manager()

    class Meta:
        managed = False
        db_table = "bench_item"

    def __str__(self) -> str:
        return self.name
