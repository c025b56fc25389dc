"""The demo app: notes, read and written through the ORM and through poolkit's engine."""

from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "testproject.demo"
    label = "demo"
    default_auto_field = "django.db.models.BigAutoField"
