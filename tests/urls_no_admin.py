"""A URLconf with the dashboard but without the admin (non-staff callers then get 403)."""

from django.urls import include, path

urlpatterns = [path("poolkit/", include("django_poolkit.dashboard.urls"))]
