"""Conveyor: a self-hosted CI/CD platform."""

__version__ = "0.1.0"
