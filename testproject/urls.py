"""Demo URLs: the notes app at the root, poolkit's health endpoints under health/, the
connection pool dashboard under poolkit/ (staff only) and the admin under admin/."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health/", include("django_poolkit.urls")),
    path("poolkit/", include("django_poolkit.dashboard.urls")),
    path("", include("testproject.demo.urls")),
]
