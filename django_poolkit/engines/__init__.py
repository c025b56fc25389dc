"""SQLAlchemy engines built from Django's ``DATABASES`` and ``POOLKIT["ENGINES"]``."""

from .registry import EngineRegistry, registry

__all__ = ["EngineRegistry", "registry"]
