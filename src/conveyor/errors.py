"""Conveyor's own exceptions. Driver and library errors are translated into these at the
edges (store, agent client); the API turns them into JSON problem responses in one handler."""

from __future__ import annotations


class ConveyorError(Exception):
    """Base of every error Conveyor raises on purpose."""

    status = 500
    title = "Internal error"


class InvalidInput(ConveyorError):
    status = 400
    title = "Invalid input"

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class Unauthorized(ConveyorError):
    status = 401
    title = "Unauthorized"


class Forbidden(ConveyorError):
    status = 403
    title = "Forbidden"


class NotFound(ConveyorError):
    status = 404
    title = "Not found"


class Conflict(ConveyorError):
    status = 409
    title = "Conflict"


class StoreUnavailable(ConveyorError):
    """The database cannot be reached right now; callers may retry."""

    status = 503
    title = "Store unavailable"
