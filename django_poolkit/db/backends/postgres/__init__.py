"""Not a backend: ``ENGINE = "django_poolkit.db.backends.postgres"`` misspells
``postgresql``; importing its ``base`` says so."""
