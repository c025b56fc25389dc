"""``/pk/`` and ``/three/``."""

from django.urls import path

from . import views

urlpatterns = [
    path("pk/", views.pk),
    path("three/", views.three),
]
