"""Store handlers of the configuration kinds pool, notifier, grant and schedule
(``conveyor.core.config_kinds`` reads and validates their files).

Which config source manages an object of these kinds is in ``config_managed``; a
released object stays as it is (a pool keeps running, a user keeps its grants, a
notifier keeps sending, a schedule stays in effect), it is only no longer managed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from conveyor.controller.config_apply import KIND_STORES, ApplyContext, ApplyEnv, KindStore
from conveyor.core.config_kinds import (
    render_grants,
    render_notifier,
    render_pool,
    render_schedule,
)
from conveyor.core.config_repo import ConfigIssue, Desired
from conveyor.core.permissions import GLOBAL, Role
from conveyor.errors import InvalidInput
from conveyor.providers.secrets import placeholders, references, seal_config
from conveyor.store.credentials import credentials
from conveyor.store.pools import pools
from conveyor.store.schema import config_managed, instance_settings, notifiers
from conveyor.store.security import audit_events, user_grants, users

__all__ = ["instance_documents", "stored_notifiers"]


# ------------------------------------------------------------------ managed marks


async def _managed(conn: AsyncConnection, kind: str) -> dict[str, str]:
    rows = (
        await conn.execute(
            select(config_managed.c.name, config_managed.c.managed_repo).where(
                config_managed.c.kind == kind
            )
        )
    ).all()
    return {r.name: r.managed_repo for r in rows}


async def _claim(conn: AsyncConnection, item: Desired, ctx: ApplyContext) -> None:
    values = {
        "managed_repo": ctx.source,
        "managed_file": item.file,
        "managed_commit": ctx.commit,
        "updated_at": ctx.now,
    }
    result = await conn.execute(
        update(config_managed)
        .where(config_managed.c.kind == item.kind, config_managed.c.name == item.name)
        .values(**values)
    )
    if result.rowcount == 0:
        await conn.execute(insert(config_managed).values(kind=item.kind, name=item.name, **values))


def _releaser(kind: str) -> Any:
    async def release(conn: AsyncConnection, name: str) -> None:
        await conn.execute(
            delete(config_managed).where(
                config_managed.c.kind == kind, config_managed.c.name == name
            )
        )

    return release


async def _upsert(
    conn: AsyncConnection, table: Any, key: Any, name: str, values: dict[str, Any], now: datetime
) -> None:
    result = await conn.execute(update(table).where(key == name).values(**values, updated_at=now))
    if result.rowcount == 0:
        await conn.execute(
            insert(table).values(**{key.name: name}, **values, created_at=now, updated_at=now)
            if "created_at" in table.c
            else insert(table).values(**{key.name: name}, **values, updated_at=now)
        )


# ------------------------------------------------------------------------- pools


async def _pools_current(conn: AsyncConnection) -> dict[str, tuple[str, str | None]]:
    managed = await _managed(conn, "pool")
    rows = (await conn.execute(select(pools))).all()
    return {r.name: (render_pool(dict(r._mapping)), managed.get(r.name)) for r in rows}


async def _stored_configs(conn: AsyncConnection, names: list[str]) -> dict[str, dict[str, Any]]:
    rows = (
        await conn.execute(
            select(pools.c.name, pools.c.provider_config).where(pools.c.name.in_(names))
        )
    ).all()
    return {r.name: dict(r.provider_config or {}) for r in rows}


def _with_secrets(
    name: str, config: dict[str, Any], stored: dict[str, Any] | None
) -> dict[str, Any]:
    """What to store: ``***`` (what an export writes for a secret) keeps the stored
    (sealed) value at the same path; references stay references. Inline secrets never
    get here (refused when the file is read). InvalidInput when ``***`` has nothing
    stored behind it or a sealed value was copied into the file."""
    return seal_config(None, name, config, stored)


async def _pools_check(
    conn: AsyncConnection, items: list[Desired], env: ApplyEnv
) -> list[ConfigIssue]:
    from conveyor.providers import make_provider

    stored = await _stored_configs(conn, [i.name for i in items])
    issues: list[ConfigIssue] = []
    for item in items:
        values: dict[str, Any] = dict(item.fields["values"])  # type: ignore[call-overload]
        config = dict(values["provider_config"])
        line = int(item.fields["provider_line"])  # type: ignore[call-overload]
        try:
            kept = _with_secrets(item.name, config, stored.get(item.name))
        except InvalidInput as exc:
            issues.append(ConfigIssue(item.file, line, f"{exc} (pool {item.name!r})"))
            continue
        refs = sorted(set(references(kept).values()))
        if refs:
            known = set(
                (
                    await conn.execute(select(credentials.c.id).where(credentials.c.id.in_(refs)))
                ).scalars()
            )
            missing = [r for r in refs if r not in known]
            if missing:
                issues.append(
                    ConfigIssue(
                        item.file,
                        line,
                        "provider_config references unknown credential(s): " + ", ".join(missing),
                    )
                )
                continue
        if env.home is None:
            continue
        try:
            make_provider(values["provider"], placeholders(kept), env.home)
        except (InvalidInput, ValueError) as exc:
            issues.append(ConfigIssue(item.file, line, f"provider {values['provider']}: {exc}"))
    return issues


async def _pool_write(conn: AsyncConnection, item: Desired, ctx: ApplyContext) -> None:
    values: dict[str, Any] = dict(item.fields["values"])  # type: ignore[call-overload]
    stored = (await _stored_configs(conn, [item.name])).get(item.name)
    values["provider_config"] = _with_secrets(item.name, dict(values["provider_config"]), stored)
    del values["name"]
    await _upsert(conn, pools, pools.c.name, item.name, values, ctx.now)
    await _claim(conn, item, ctx)


# --------------------------------------------------------------------- notifiers


async def stored_notifiers(conn: AsyncConnection) -> dict[str, tuple[dict[str, Any], list[Any]]]:
    """name -> (notifier document, rules) of the notifiers a config apply stored."""
    rows = (await conn.execute(select(notifiers).order_by(notifiers.c.name))).all()
    return {r.name: (dict(r.document), list(r.rules or [])) for r in rows}


async def _notifiers_current(conn: AsyncConnection) -> dict[str, tuple[str, str | None]]:
    managed = await _managed(conn, "notifier")
    return {
        name: (render_notifier(name, document, rules), managed.get(name))
        for name, (document, rules) in (await stored_notifiers(conn)).items()
    }


async def _notifiers_check(
    conn: AsyncConnection, items: list[Desired], env: ApplyEnv
) -> list[ConfigIssue]:
    return [
        ConfigIssue(
            item.file,
            int(item.fields["name_line"]),  # type: ignore[call-overload]
            f"notifier {item.name!r} is also defined in the controller's notifications file "
            f"{env.file_notifiers[item.name]}: a notifier is defined in one place only; "
            "remove it from that file or rename this one",
        )
        for item in items
        if item.name in env.file_notifiers
    ]


async def _notifier_write(conn: AsyncConnection, item: Desired, ctx: ApplyContext) -> None:
    values = {"document": item.fields["document"], "rules": item.fields["rules"]}
    await _upsert(conn, notifiers, notifiers.c.name, item.name, values, ctx.now)
    await _claim(conn, item, ctx)


# ------------------------------------------------------------------------ grants


async def _all_grants(conn: AsyncConnection) -> dict[str, list[tuple[str, str]]]:
    rows = (
        await conn.execute(
            select(users.c.name, user_grants.c.role, user_grants.c.pattern).join(
                user_grants, user_grants.c.user_id == users.c.id
            )
        )
    ).all()
    out: dict[str, list[tuple[str, str]]] = {}
    for r in rows:
        out.setdefault(r.name, []).append((r.role, r.pattern))
    return out


async def _grants_current(conn: AsyncConnection) -> dict[str, tuple[str, str | None]]:
    managed = await _managed(conn, "grant")
    held = await _all_grants(conn)
    existing = set((await conn.execute(select(users.c.name))).scalars())
    # A managed user with no grants left is still declared (grants: []); a deleted
    # user is not.
    names = set(held) | (set(managed) & existing)
    return {n: (render_grants(n, held.get(n, [])), managed.get(n)) for n in sorted(names)}


async def _grants_check(
    conn: AsyncConnection, items: list[Desired], env: ApplyEnv
) -> list[ConfigIssue]:
    rows = (await conn.execute(select(users.c.name, users.c.disabled))).all()
    enabled = {r.name for r in rows if not r.disabled}
    known = {r.name for r in rows}
    issues = [
        ConfigIssue(
            item.file,
            int(item.fields["user_line"]),  # type: ignore[call-overload]
            f"unknown user {item.name!r}: users are not configuration; create the user first "
            f"(conveyor admin user add {item.name}), then apply",
        )
        for item in items
        if item.name not in known
    ]
    admin = (Role.ADMIN.value, GLOBAL)
    held = await _all_grants(conn)
    before = {u for u in enabled if admin in held.get(u, [])}
    after = set(before)
    for item in items:
        wanted = {tuple(g) for g in item.fields["grants"]}  # type: ignore[attr-defined]
        if admin in wanted and item.name in enabled:
            after.add(item.name)
        else:
            after.discard(item.name)
    if before and not after:
        for item in items:
            if item.name in before:
                issues.append(
                    ConfigIssue(
                        item.file,
                        int(item.fields["grants_line"]),  # type: ignore[call-overload]
                        f"this would remove the last admin grant (admin on '*' of "
                        f"{item.name!r}): keep at least one enabled user with role admin on "
                        "'*' (nothing was applied)",
                    )
                )
    return issues


async def _grant_write(conn: AsyncConnection, item: Desired, ctx: ApplyContext) -> None:
    user_id = await conn.scalar(select(users.c.id).where(users.c.name == item.name))
    assert user_id is not None  # checked
    wanted = {tuple(g) for g in item.fields["grants"]}  # type: ignore[attr-defined]
    rows = (
        await conn.execute(
            select(user_grants.c.id, user_grants.c.role, user_grants.c.pattern).where(
                user_grants.c.user_id == user_id
            )
        )
    ).all()
    have = {(r.role, r.pattern): r.id for r in rows}
    gone = [gid for key, gid in have.items() if key not in wanted]
    if gone:
        await conn.execute(delete(user_grants).where(user_grants.c.id.in_(gone)))
    added = sorted(wanted - set(have))
    for role, pattern in added:
        await conn.execute(
            insert(user_grants).values(
                user_id=user_id, role=role, pattern=pattern, created_at=ctx.now
            )
        )
    if added or gone:
        # A security event, recorded in the same transaction as the change.
        await conn.execute(
            insert(audit_events).values(
                at=ctx.now,
                actor=ctx.author[:200],
                action="grant.config_applied",
                target=f"user:{item.name}",
                outcome="success",
                source=ctx.source[:200],
                security=True,
                detail={
                    "added": [list(g) for g in added],
                    "removed": sorted([r, p] for (r, p), gid in have.items() if gid in gone),
                    "commit": ctx.commit,
                    "file": item.file,
                },
            )
        )
    await _claim(conn, item, ctx)


# --------------------------------------------------------------------- schedules


async def instance_documents(conn: AsyncConnection) -> dict[str, dict[str, Any]]:
    """name ("retention", "backup") -> the stored document (its keys win over settings)."""
    rows = (await conn.execute(select(instance_settings))).all()
    return {r.name: dict(r.document) for r in rows}


async def _schedules_current(conn: AsyncConnection) -> dict[str, tuple[str, str | None]]:
    managed = await _managed(conn, "schedule")
    return {
        name: (render_schedule(name, document), managed.get(name))
        for name, document in (await instance_documents(conn)).items()
    }


async def _schedule_write(conn: AsyncConnection, item: Desired, ctx: ApplyContext) -> None:
    values = {"document": item.fields["document"]}
    await _upsert(conn, instance_settings, instance_settings.c.name, item.name, values, ctx.now)
    await _claim(conn, item, ctx)


KIND_STORES["pool"] = KindStore(
    _pools_current, _pool_write, _releaser("pool"), _pools_check, _claim
)
KIND_STORES["notifier"] = KindStore(
    _notifiers_current, _notifier_write, _releaser("notifier"), _notifiers_check, _claim
)
KIND_STORES["grant"] = KindStore(
    _grants_current, _grant_write, _releaser("grant"), _grants_check, _claim
)
KIND_STORES["schedule"] = KindStore(
    _schedules_current, _schedule_write, _releaser("schedule"), None, _claim
)


async def instance_overrides(store: Any, name: str) -> dict[str, Any]:
    """The controller settings a stored schedule (``schedules/NAME.yml``) overrides:
    setting name -> value. Empty when nothing was applied (or on a store error: the
    settings then stay in effect)."""
    from conveyor.core.config_kinds import SCHEDULE_FIELDS

    try:
        async with store.read() as conn:
            document = (await instance_documents(conn)).get(name, {})
    except Exception as exc:
        import structlog

        structlog.get_logger(__name__).warning(
            "config.instance_settings_unreadable", error=repr(exc)
        )
        return {}
    fields = SCHEDULE_FIELDS[name]
    return {fields[k][0]: v for k, v in document.items() if k in fields}


async def effective_instance(store: Any, settings: Any) -> dict[str, Any]:
    """Every instance schedule field: its value in effect and where it comes from
    ("config" with the managing file, or "settings")."""
    from conveyor.core.config_kinds import SCHEDULE_FIELDS

    async with store.read() as conn:
        documents = await instance_documents(conn)
        managed = {
            r.name: r
            for r in (
                await conn.execute(
                    select(config_managed).where(config_managed.c.kind == "schedule")
                )
            ).all()
        }
    out: dict[str, Any] = {}
    for name, fields in SCHEDULE_FIELDS.items():
        document = documents.get(name, {})
        mark = managed.get(name)
        section: dict[str, Any] = {
            "stored": name in documents,
            "managed_repo": mark.managed_repo if mark else None,
            "managed_file": mark.managed_file if mark else None,
            "managed_commit": mark.managed_commit if mark else None,
            "fields": {},
        }
        for key, (setting, _) in fields.items():
            if key in document:
                section["fields"][key] = {"value": document[key], "source": "config"}
            else:
                value = getattr(settings, setting, None)
                section["fields"][key] = {"value": value, "source": f"settings ({setting})"}
        out[name] = section
    return out


async def retention_policy(store: Any, base: Any, what: str) -> Any:
    """``base`` (a RetentionPolicy from the settings) with what ``schedules/retention.yml``
    stored: ``what`` is "artifact" or "build"."""
    from dataclasses import replace

    found = await instance_overrides(store, "retention")
    if not found:
        return base
    return replace(
        base,
        keep_last=found.get(f"{what}_keep_last", base.keep_last),
        keep_days=found.get(f"{what}_keep_days", base.keep_days),
        keep_released=found.get("retention_keep_released", base.keep_released),
    )
