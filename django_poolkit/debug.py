"""Django error reports that mask passwords inside database URLs.

Django's ``SafeExceptionReporterFilter`` (DEBUG pages and the e-mails ``AdminEmailHandler``
sends) masks settings and ``request.META`` entries whose *key* matches
``API|TOKEN|KEY|SECRET|PASS|SIGNATURE``. A password inside a URL sits under a key such as
``url`` (``POOLKIT["ENGINES"][name]["url"]``) or ``POOLKIT_X__URL``, so Django shows it. The
ways out, either of which poolkit's ``poolkit.W001`` check asks for:

- give the password where Django masks it: ``POOLKIT["ENGINES"][name]["password"]`` or the
  variable ``POOLKIT_<NAME>__PASSWORD``;
- or set ``DEFAULT_EXCEPTION_REPORTER_FILTER =
  "django_poolkit.debug.PoolkitExceptionReporterFilter"``, which also masks the password of
  every URL in a setting or a ``META`` value (``user:password@`` and ``?password=``).
"""

from __future__ import annotations

import re
from typing import Any

from django.views.debug import SafeExceptionReporterFilter

__all__ = ["PoolkitExceptionReporterFilter", "mask_url_passwords", "url_holds_password"]

#: ``scheme://user:password@host``: the password runs to the last "@" of the URL, as
#: django-environ reads it (a URL ends at whitespace, a comma or a quote).
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s,'\"]*:)"
                       r"(?P<password>[^\s,'\"]*)@(?P<host>[^@/?#\s,'\"]*)")
#: ``?password=...`` (libpq also reads ``sslpassword``).
_QUERY = re.compile(r"(?P<head>[?&](?:ssl)?password=)(?P<password>[^&#\s,'\"]*)", re.IGNORECASE)
#: ``password=...`` in a libpq conninfo string (``host=h password='a b' dbname=d``).
_CONNINFO = re.compile(r"(?P<head>(?:^|\s)(?:ssl)?password\s*=\s*)"
                       r"(?P<password>'(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)

_MASK = SafeExceptionReporterFilter.cleansed_substitute


def mask_url_passwords(text: str) -> str:
    """``text`` with the password of every URL in it replaced by Django's mask."""
    if "://" not in text and "password" not in text.lower():
        return text
    masked = _USERINFO.sub(lambda m: f"{m['head']}{_MASK}@{m['host']}", text)
    masked = _QUERY.sub(lambda m: f"{m['head']}{_MASK}", masked)
    return _CONNINFO.sub(lambda m: f"{m['head']}{_MASK}", masked)


def url_holds_password(url: str) -> bool:
    """Whether ``url`` carries a password, in its userinfo or its query."""
    return mask_url_passwords(url) != url


class PoolkitExceptionReporterFilter(SafeExceptionReporterFilter):
    """Django's filter, plus the password of every URL inside a setting or a ``META`` value
    (``DATABASE_URL``-style environment variables reach ``META`` under runserver), and the
    frames' variables cleansed like settings: a ``password`` key in a dict of connection
    parameters, a conninfo string or a URL, in any library's frame."""

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        """Mask as Django does, then mask URL passwords in what is left as text."""
        cleansed = super().cleanse_setting(key, value)
        if isinstance(cleansed, str):
            return mask_url_passwords(cleansed)
        return cleansed

    def get_traceback_frame_variables(self, request: Any, tb_frame: Any) -> Any:
        """Django's cleansing (``sensitive_variables``, with DEBUG off), then every value
        cleansed like a setting, with DEBUG on too: a DEBUG page shows everything else, but
        not a database password."""
        variables = super().get_traceback_frame_variables(request, tb_frame)
        return [(name, value if isinstance(value, str) and value == self.cleansed_substitute
                 else self.cleanse_setting(name, value)) for name, value in variables]
