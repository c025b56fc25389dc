"""``/pk/``, ``/three/``, and the async ``/apk/`` and ``/apk-engine/``."""

from django.urls import path

from . import views

urlpatterns = [
    path("pk/", views.pk),
    path("three/", views.three),
    path("apk/", views.apk),
    path("apk-engine/", views.apk_engine),
]
