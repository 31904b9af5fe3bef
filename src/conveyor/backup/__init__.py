"""Backups, restores, store moves and disaster-recovery drills (docs/backup.md).

- :mod:`conveyor.backup.logical`: consistent, engine-neutral database export/import;
- :mod:`conveyor.backup.manifest`: what a backup holds, file by file;
- :mod:`conveyor.backup.archive`: create / list / verify / restore / prune at a target;
- :mod:`conveyor.backup.secrets`: files kept only encrypted (passphrase);
- :mod:`conveyor.backup.drill`: restore + start + smoke build, timed (RTO/RPO).
"""
