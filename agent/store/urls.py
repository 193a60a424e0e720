"""The URL of a PostgreSQL state (``state.url``) as text: its password is a secret.

No driver here, so the configuration and the front ends can check and redact a URL without
importing psycopg."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from agent.errors import without_password

SCHEMES = ("postgresql", "postgres")


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and views)."""
    return without_password(url, "<an unparsable database URL>")


def url_secrets(url: str | None) -> tuple[str, ...]:
    """The secrets a state URL holds (its password, as written and decoded), longest first."""
    if not url:
        return ()
    try:
        parts = urlsplit(url)
    except ValueError:
        return ()
    if not parts.password:
        return ()
    raw = parts.netloc.rpartition("@")[0].partition(":")[2]
    return tuple(sorted({s for s in (raw, unquote(raw)) if s}, key=len, reverse=True))


def url_problem(url: str) -> str | None:
    """What is wrong with a state URL, in words that never quote it (None: nothing)."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "is not a URL — e.g. `postgresql://agent:PASSWORD@db.example.com/convert_agent`"
    if parts.scheme.lower() not in SCHEMES:
        return (
            "must be a PostgreSQL URL (postgresql://…) — "
            "e.g. `postgresql://agent:PASSWORD@db.example.com/convert_agent`"
        )
    if not parts.path.strip("/"):
        return "must name the database — e.g. `postgresql://agent@db.example.com/convert_agent`"
    return None
