"""Health URLs: ``path("health/", include("django_poolkit.urls"))`` gives ``health/live/``,
``health/ready/`` and ``health/db/``, named ``poolkit:live``, ``poolkit:ready`` and
``poolkit:db``."""

from __future__ import annotations

from django.urls import path

from .health import views

app_name = "poolkit"

urlpatterns = [
    path("live/", views.live, name="live"),
    path("ready/", views.ready, name="ready"),
    path("db/", views.db, name="db"),
]
