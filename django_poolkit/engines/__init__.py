"""SQLAlchemy engines built from Django's ``DATABASES`` and ``POOLKIT["ENGINES"]``."""

from .registry import EngineRegistry, engine_registry

__all__ = ["EngineRegistry", "engine_registry"]
