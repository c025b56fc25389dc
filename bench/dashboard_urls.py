"""URLs of the dashboard benchmark (bench/dashboard.py): the dashboard alone."""

from django.urls import include, path

urlpatterns = [path("poolkit/", include("django_poolkit.dashboard.urls"))]
