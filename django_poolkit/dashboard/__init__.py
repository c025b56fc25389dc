"""The staff dashboard: every pool, replica and server connection of a project on one page.

Mount it with ``path("poolkit/", include("django_poolkit.dashboard.urls"))``. Only active
staff users see it; the page and its JSON twin never wait on a saturated pool or a hanging
server (figures that need the server come from bounded background reads and say how old they
are). :mod:`.data` gathers the figures, :mod:`.views` renders them.
"""
