"""Jenkins-style cron specs with ``H`` hashing, and when they fire next.

A spec is five fields, ``minute hour day-of-month month day-of-week``, each a
``*``, a number, a range ``a-b``, a list ``a,b``, with an optional step ``/n``;
or an alias: ``@yearly`` ``@annually`` ``@monthly`` ``@weekly`` ``@daily``
``@midnight`` ``@hourly``. ``H`` stands for "a value hashed from the job's name":
``H`` anywhere in the field's range, ``H(0-29)`` within a range, ``H/15`` every 15
minutes from a hashed offset. Hashing spreads many jobs that all say ``H * * * *``
over the hour, deterministically (the same job always fires at the same minute).
Aliases are hashed too, like Jenkins (``@daily`` = ``H H * * *``).

A spec may begin with a ``TZ=Area/City`` line (Jenkins style); otherwise the
time zone given to :func:`parse_cron` applies (default UTC). Pure code: ``now`` is
passed in.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["CronError", "CronSchedule", "hash_value", "parse_cron"]

# (name, low, high) of each field, in spec order.
_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)
_ALIASES = {
    "@yearly": "H H H H *",
    "@annually": "H H H H *",
    "@monthly": "H H H * *",
    "@weekly": "H H * * H",
    "@daily": "H H * * *",
    "@midnight": "H H(0-2) * * *",
    "@hourly": "H * * * *",
}
# For hashing, day of month stops at 28 so that every month has it (as Jenkins does).
_HASH_HIGH = {2: 28, 4: 6}
_TERM = re.compile(
    r"(?P<base>\*|H(?:\((?P<hlo>\d+)-(?P<hhi>\d+)\))?|\d+(?:-\d+)?)(?:/(?P<step>\d+))?"
)
#: How far ahead :meth:`CronSchedule.next_after` looks before giving up (Feb 30 never comes).
_HORIZON = timedelta(days=366 * 5)


class CronError(ValueError):
    """An invalid cron spec; the message says which field and why."""


def hash_value(seed: str, field_index: int, span: int) -> int:
    """A stable number in ``[0, span)`` from the job name and the field: the same
    job hashes the same everywhere (no process-randomised ``hash()``)."""
    digest = hashlib.sha256(f"{seed}\x00{field_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % span


@dataclass(frozen=True)
class CronSchedule:
    spec: str
    timezone: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday .. 6
    # Like classic cron: when both day fields are restricted, either one matching is enough.
    days_restricted: bool
    weekdays_restricted: bool

    def _day_matches(self, moment: datetime) -> bool:
        if moment.month not in self.months:
            return False
        day_ok = moment.day in self.days
        weekday_ok = (moment.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return day_ok or weekday_ok
        return day_ok and weekday_ok

    def next_after(self, after: datetime) -> datetime | None:
        """The first firing time strictly after ``after`` (an aware datetime),
        returned in UTC; ``None`` if the spec never fires (e.g. ``0 0 30 2 *``)."""
        zone = ZoneInfo(self.timezone)
        local = after.astimezone(zone).replace(second=0, microsecond=0, tzinfo=None)
        moment = local + timedelta(minutes=1)
        end = local + _HORIZON
        while moment <= end:
            if not self._day_matches(moment):
                moment = (moment + timedelta(days=1)).replace(hour=0, minute=0)
                continue
            if moment.hour not in self.hours:
                moment = (moment + timedelta(hours=1)).replace(minute=0)
                continue
            if moment.minute not in self.minutes:
                moment += timedelta(minutes=1)
                continue
            # Wall time -> instant. A wall time skipped by a DST jump maps forward;
            # a repeated one fires at its first occurrence (fold=0).
            fired = moment.replace(tzinfo=zone).astimezone(ZoneInfo("UTC"))
            if fired > after:
                return fired
            moment += timedelta(minutes=1)
        return None

    def fires_between(self, start: datetime, end: datetime) -> datetime | None:
        """The last firing time in ``(start, end]``, if any: what a trigger loop
        that last looked at ``start`` owes now (missed firings collapse into one)."""
        last: datetime | None = None
        moment = self.next_after(start)
        while moment is not None and moment <= end:
            last = moment
            moment = self.next_after(moment)
        return last


def _parse_field(text: str, index: int, seed: str) -> tuple[frozenset[int], bool]:
    name, low, high = _FIELDS[index]
    values: set[int] = set()
    restricted = text != "*"
    for term in text.split(","):
        match = _TERM.fullmatch(term)
        if match is None:
            raise CronError(
                f"{name}: cannot read {term!r} (use *, N, A-B, A,B, */N, H, H(A-B), H/N)"
            )
        base, step_text = match["base"], match["step"]
        step = int(step_text) if step_text else 1
        if step < 1:
            raise CronError(f"{name}: step must be at least 1 in {term!r}")
        if base == "*":
            lo, hi = low, high
            start = lo
        elif base.startswith("H"):
            lo, hi = (int(match["hlo"]), int(match["hhi"])) if match["hlo"] else (low, high)
            if not match["hlo"]:
                hi = _HASH_HIGH.get(index, hi)
            if lo > hi or lo < low or hi > high:
                raise CronError(f"{name}: range {lo}-{hi} outside {low}-{high} in {term!r}")
            if step_text:
                # H/15: every 15 from a hashed offset within the first step.
                start = lo + hash_value(seed, index, min(step, hi - lo + 1))
            else:
                values.add(lo + hash_value(seed, index, hi - lo + 1))
                continue
        else:
            parts = [int(p) for p in base.split("-")]
            lo, hi = (parts[0], parts[-1])
            if len(parts) == 1 and step_text:
                hi = high  # "5/15": from 5 to the end, like Vixie cron
            if lo > hi or lo < low or hi > high:
                raise CronError(f"{name}: {term!r} is outside {low}-{high}")
            start = lo
        values.update(range(start, hi + 1, step))
    if index == 4 and 7 in values:  # 7 is Sunday too
        values.discard(7)
        values.add(0)
    return frozenset(values), restricted


def parse_cron(spec: str, seed: str, timezone: str = "UTC") -> CronSchedule:
    """Parse a Jenkins-style spec; ``seed`` (the job name) decides every ``H``."""
    lines = [ln.strip() for ln in spec.strip().splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("#")]
    if lines and lines[0].startswith(("TZ=", "CRON_TZ=")):
        timezone = lines.pop(0).split("=", 1)[1].strip()
    if len(lines) != 1:
        raise CronError("a cron spec is one line of five fields (after an optional TZ= line)")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown time zone {timezone!r}") from None
    text = _ALIASES.get(lines[0].lower(), lines[0])
    if text.startswith("@"):
        raise CronError(f"unknown alias {lines[0]!r} (known: {', '.join(sorted(_ALIASES))})")
    fields = text.split()
    if len(fields) != 5:
        raise CronError(f"expected 5 fields (minute hour day month weekday), got {len(fields)}")
    parsed = [_parse_field(f, i, seed) for i, f in enumerate(fields)]
    return CronSchedule(
        spec=spec.strip(),
        timezone=timezone,
        minutes=parsed[0][0],
        hours=parsed[1][0],
        days=parsed[2][0],
        months=parsed[3][0],
        weekdays=parsed[4][0],
        days_restricted=parsed[2][1],
        weekdays_restricted=parsed[4][1],
    )
