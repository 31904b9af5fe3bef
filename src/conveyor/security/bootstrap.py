"""The first admin: on an empty database, a real ``admin`` user (global admin grant, no
password until ``conveyor admin user passwd admin``) and an admin-scoped API token,
printed once by ``conveyor server``/``up`` and saved in HOME/admin-token."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from conveyor.core.permissions import Role, Scope
from conveyor.errors import Conflict
from conveyor.store import Store
from conveyor.store import security as db

ADMIN_USER = "admin"


async def ensure_first_admin(store: Store, now: datetime, token: str | None = None) -> str | None:
    """The new admin token (``token`` when one is handed in), or None when users exist
    already (or another controller created the first admin at the same moment)."""
    if await db.count_users(store) > 0:
        return None
    try:
        user = await db.create_user(store, ADMIN_USER, None, now, Role.ADMIN)
    except Conflict:
        return None
    token = token or f"cvy_{secrets.token_urlsafe(32)}"
    digest = hashlib.sha256(token.encode()).hexdigest()
    await db.create_user_token(store, user.id, "admin", digest, Scope.ADMIN.value, now)
    return token
