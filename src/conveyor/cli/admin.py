"""`conveyor admin`: users, API tokens, grants, agent enrollment tokens, the audit log.

Every command calls the API (like the rest of the CLI) with an admin's token."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from conveyor.cli.client import ApiClient, fail
from conveyor.cli.options import TokenOpt, UrlOpt

app = typer.Typer(help="Administration: users, tokens, grants, agent tokens, audit log.")
user_app = typer.Typer(help="Users: add, list, disable, enable, passwd.")
token_app = typer.Typer(help="API tokens: create (shown once), list, revoke.")
agent_token_app = typer.Typer(help="Agent enrollment tokens: create (shown once), list, revoke.")
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")
app.add_typer(agent_token_app, name="agent-token")
out = Console()

ROLES = "admin, operator, developer or viewer"


def _password(password_stdin: bool) -> str:
    if password_stdin:
        value = sys.stdin.readline().rstrip("\n")
    else:
        value = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(value) < 8:
        fail("the password needs at least 8 characters")
    return value


def _show(value: Any) -> str:
    return "" if value is None else str(value)


PasswordStdinOpt = Annotated[
    bool, typer.Option("--password-stdin", help="read the password from standard input")
]


# ------------------------------------------------------------------- users
@user_app.command("add")
def user_add(
    name: str,
    role: Annotated[str | None, typer.Option(help=f"global role: {ROLES}")] = None,
    no_password: Annotated[
        bool, typer.Option("--no-password", help="token-only user (cannot sign in)")
    ] = False,
    password_stdin: PasswordStdinOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Add a user (asks for the password unless --no-password)."""
    client = ApiClient.from_options(url, token)
    body: dict[str, Any] = {"name": name}
    if role is not None:
        body["role"] = role
    if not no_password:
        body["password"] = _password(password_stdin)
    client.json("POST", "/api/v1/users", json=body)
    out.print(f"user {name} added" + (f" with the global {role} role" if role else ""))


@user_app.command("list")
def user_list(url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Users with their grants."""
    table = Table("name", "state", "grants")
    for u in ApiClient.from_options(url, token).json("GET", "/api/v1/users"):
        state = "disabled" if u["disabled"] else ("locked" if u["locked"] else "active")
        grants = ", ".join(f"{g['role']} on {g['pattern']}" for g in u["grants"])
        table.add_row(u["name"], state, grants)
    out.print(table)


@user_app.command("disable")
def user_disable(name: str, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Disable a user: their tokens are refused and their sessions end."""
    ApiClient.from_options(url, token).json("POST", f"/api/v1/users/{name}/disable")
    out.print(f"user {name} disabled")


@user_app.command("enable")
def user_enable(name: str, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Enable a disabled user again."""
    ApiClient.from_options(url, token).json("POST", f"/api/v1/users/{name}/enable")
    out.print(f"user {name} enabled")


@user_app.command("passwd")
def user_passwd(
    name: str, password_stdin: PasswordStdinOpt = False, url: UrlOpt = None, token: TokenOpt = None
) -> None:
    """Set a user's password (also unlocks a locked account)."""
    client = ApiClient.from_options(url, token)
    password = _password(password_stdin)
    client.request("PUT", f"/api/v1/users/{name}/password", json={"password": password})
    out.print(f"password of {name} set")


# ------------------------------------------------------------------ tokens
@token_app.command("create")
def token_create(
    name: str,
    scope: Annotated[str, typer.Option(help="read, trigger or admin")] = "read",
    user: Annotated[str | None, typer.Option(help="for another user (admins)")] = None,
    expires_days: Annotated[
        float | None, typer.Option("--expires-days", help="expire after N days")
    ] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Create an API token; it is printed once (only its digest is stored)."""
    body: dict[str, Any] = {"name": name, "scope": scope}
    if user is not None:
        body["user"] = user
    if expires_days is not None:
        body["expires_in_days"] = expires_days
    created = ApiClient.from_options(url, token).json("POST", "/api/v1/tokens", json=body)
    out.print(f"token {created['id']} for {created['user']} ({created['scope']}), shown once:")
    print(created["token"])


@token_app.command("list")
def token_list(
    user: Annotated[str | None, typer.Option(help="another user's tokens (admins)")] = None,
    all_users: Annotated[bool, typer.Option("--all", help="everyone's tokens (admins)")] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Tokens (never their values)."""
    params: dict[str, Any] = {}
    if user is not None:
        params["user"] = user
    if all_users:
        params["all"] = "true"
    table = Table("id", "user", "name", "scope", "created", "expires", "revoked")
    for t in ApiClient.from_options(url, token).json("GET", "/api/v1/tokens", params=params):
        table.add_row(
            str(t["id"]), t["user"], t["name"], t["scope"], t["created_at"],
            _show(t["expires_at"]), _show(t["revoked_at"]),
        )  # fmt: skip
    out.print(table)


@token_app.command("revoke")
def token_revoke(token_id: int, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Revoke an API token."""
    ApiClient.from_options(url, token).request("DELETE", f"/api/v1/tokens/{token_id}")
    out.print(f"token {token_id} revoked")


# ------------------------------------------------------------------ grants
@app.command("grant")
def grant(
    user: str,
    role: Annotated[str, typer.Argument(help=ROLES)],
    on: Annotated[str, typer.Option("--on", help="'*' (everything), 'team-a/*' or a job")] = "*",
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Give a user a role, globally or on a folder / job-name prefix."""
    body = {"user": user, "role": role, "pattern": on}
    ApiClient.from_options(url, token).json("POST", "/api/v1/grants", json=body)
    out.print(f"{user}: {role} on {on}")


@app.command("revoke")
def revoke(
    user: str,
    role: Annotated[str, typer.Argument(help=ROLES)],
    on: Annotated[str, typer.Option("--on", help="the pattern the grant was given on")] = "*",
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Take a role grant away from a user."""
    body = {"user": user, "role": role, "pattern": on}
    ApiClient.from_options(url, token).json("POST", "/api/v1/grants/revoke", json=body)
    out.print(f"{user}: no longer {role} on {on}")


@app.command("grants")
def grants(
    user: Annotated[str | None, typer.Option(help="one user's grants")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """List role grants."""
    params = {"user": user} if user else {}
    table = Table("user", "role", "on")
    for g in ApiClient.from_options(url, token).json("GET", "/api/v1/grants", params=params):
        table.add_row(g["user"], g["role"], g["pattern"])
    out.print(table)


# ------------------------------------------------------------ agent tokens
@agent_token_app.command("create")
def agent_token_create(
    pool: Annotated[str | None, typer.Option(help="any agent of this pool may enrol")] = None,
    agent: Annotated[str | None, typer.Option(help="only the agent of this name")] = None,
    name: Annotated[str | None, typer.Option(help="a label for the token")] = None,
    one_time: Annotated[bool, typer.Option("--one-time", help="enrols one agent only")] = False,
    expires_days: Annotated[
        float | None, typer.Option("--expires-days", help="expire after N days")
    ] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Create an agent enrollment token; printed once. Pass it to `conveyor agent --token`."""
    body: dict[str, Any] = {"one_time": one_time}
    for key, value in (("pool", pool), ("agent_name", agent), ("name", name)):
        if value is not None:
            body[key] = value
    if expires_days is not None:
        body["expires_in_days"] = expires_days
    created = ApiClient.from_options(url, token).json("POST", "/api/v1/agent-tokens", json=body)
    out.print(f"agent token {created['id']} ({created['name']}), shown once:")
    print(created["token"])


@agent_token_app.command("list")
def agent_token_list(url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Enrollment tokens (never their values)."""
    table = Table("id", "name", "pool", "agent", "one-time", "used", "expires", "revoked")
    for t in ApiClient.from_options(url, token).json("GET", "/api/v1/agent-tokens"):
        table.add_row(
            str(t["id"]), t["name"], _show(t["pool"]), _show(t["agent_name"]),
            "yes" if t["one_time"] else "", _show(t["used_at"]), _show(t["expires_at"]),
            _show(t["revoked_at"]),
        )  # fmt: skip
    out.print(table)


@agent_token_app.command("revoke")
def agent_token_revoke(token_id: int, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Revoke an enrollment token: agents enrolled with it are disconnected."""
    ApiClient.from_options(url, token).request("DELETE", f"/api/v1/agent-tokens/{token_id}")
    out.print(f"agent token {token_id} revoked; its agents are refused from their next call")


# ------------------------------------------------------------------- audit
@app.command("audit")
def audit(
    actor: Annotated[str | None, typer.Option(help="who")] = None,
    action: Annotated[str | None, typer.Option(help="what, e.g. login.failed or login")] = None,
    since: Annotated[str | None, typer.Option(help="ISO time with zone")] = None,
    security: Annotated[bool, typer.Option("--security", help="security events only")] = False,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    cursor: Annotated[int | None, typer.Option(help="next page: the cursor printed last")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """The audit log, newest first."""
    params: dict[str, Any] = {"limit": limit, "security_only": security}
    for key, value in (("actor", actor), ("action", action), ("since", since), ("cursor", cursor)):
        if value is not None:
            params[key] = value
    page = ApiClient.from_options(url, token).json("GET", "/api/v1/audit", params=params)
    table = Table("id", "when", "actor", "action", "target", "outcome", "source", "sec")
    for e in page["events"]:
        table.add_row(
            str(e["id"]), e["at"], e["actor"], e["action"], e["target"], e["outcome"],
            e["source"], "!" if e["security"] else "",
        )  # fmt: skip
    out.print(table)
    if page["next_cursor"] is not None:
        out.print(f"more: --cursor {page['next_cursor']}")
