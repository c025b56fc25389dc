"""The test project's URLs with the Prometheus metrics mounted."""

from django.urls import include, path

from testproject.urls import urlpatterns as project

urlpatterns = [path("metrics/", include("django_poolkit.metrics")), *project]
