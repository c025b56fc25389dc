"""Demo URLs: the notes app at the root."""

from django.urls import include, path

urlpatterns = [
    path("", include("testproject.demo.urls")),
]
