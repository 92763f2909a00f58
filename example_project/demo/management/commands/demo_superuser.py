"""``manage.py demo_superuser``: admin / admin, in the embedded SQLite database only.

``dev.py serve`` runs it so the README's quickstart can log in. A well-known password must
never reach a database that outlives a laptop session, so any database other than the
embedded ``db.sqlite3`` (a ``DATABASE_URL`` naming PostgreSQL, or another SQLite file) is
left alone: use ``manage.py createsuperuser`` there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import DEFAULT_DB_ALIAS, connections


def embedded_path() -> Path | None:
    """The example's own SQLite file (the default when ``DATABASE_URL`` is unset)."""
    base_dir = getattr(settings, "BASE_DIR", None)
    return None if base_dir is None else Path(base_dir) / "db.sqlite3"


def is_embedded_database(alias: str = DEFAULT_DB_ALIAS) -> bool:
    """True when ``alias`` is the embedded SQLite database, not one ``DATABASE_URL`` names."""
    connection = connections[alias]
    path = embedded_path()
    if connection.vendor != "sqlite" or path is None:
        return False
    return Path(str(connection.settings_dict["NAME"])).resolve() == path.resolve()


class Command(BaseCommand):
    help = "Create the superuser admin/admin, only in the embedded SQLite database."

    def handle(self, *args: Any, **options: Any) -> None:
        if not is_embedded_database():
            self.stdout.write(
                "DATABASE_URL names another database: no admin/admin there. "
                "Create a superuser with `manage.py createsuperuser`."
            )
            return
        users = get_user_model()._default_manager
        if users.filter(username="admin").exists():
            return
        users.create_superuser("admin", "admin@example.com", "admin")  # type: ignore[attr-defined]
        self.stdout.write("Created the superuser admin / admin.")
