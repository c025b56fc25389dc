"""Demo URLs: the notes app at the root, poolkit's health endpoints under health/."""

from django.urls import include, path

urlpatterns = [
    path("health/", include("django_poolkit.urls")),
    path("", include("testproject.demo.urls")),
]
