"""The dashboard's URLs: ``path("poolkit/", include("django_poolkit.dashboard.urls"))`` gives
the page (``poolkit_dashboard:index``) and its JSON (``poolkit_dashboard:data``)."""

from __future__ import annotations

from django.urls import path

from . import data, views

app_name = "poolkit_dashboard"

urlpatterns = [
    path("", views.index, name="index"),
    path("data.json", views.data_view, name="data"),
]

# The wait and hold histograms count from the moment the URLconf is loaded.
data.install()
