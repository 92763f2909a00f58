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


def is_embedded_database(alias: str = DEFAULT_DB_ALIAS) -> bool:
    """True when ``alias`` is the example's own SQLite file, ``BASE_DIR / "db.sqlite3"``."""
    connection = connections[alias]
    base_dir = getattr(settings, "BASE_DIR", None)
    if connection.vendor != "sqlite" or base_dir is None:
        return False
    name = Path(str(connection.settings_dict["NAME"]))
    return name.resolve() == (Path(base_dir) / "db.sqlite3").resolve()


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
