"""Encrypted credentials: keys and encryption (:mod:`.keys`), what a credential holds
(:mod:`.values`), and resolving a build's bindings for its agent (:mod:`.binding`).
The rows live in :mod:`conveyor.store.credentials`; the format is in docs/credentials.md."""
