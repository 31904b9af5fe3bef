"""Jenkins-style cron with H hashing (pure code)."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime

import pytest

from conveyor.core.cron import CronError, parse_cron

NOW = datetime(2026, 3, 2, 10, 7, tzinfo=UTC)  # a Monday


def test_h_spreads_100_jobs_over_the_hour_deterministically() -> None:
    minutes = [next(iter(parse_cron("H * * * *", f"job-{i}").minutes)) for i in range(100)]
    again = [next(iter(parse_cron("H * * * *", f"job-{i}").minutes)) for i in range(100)]
    assert minutes == again  # the same job always fires at the same minute
    counts = Counter(minutes)
    # 100 jobs over 60 minutes: many distinct minutes, no pile-up on one.
    assert len(counts) >= 40
    assert max(counts.values()) <= 6
    # ...and the schedule says so: each job fires once an hour at its minute.
    for i, minute in enumerate(minutes):
        fired = parse_cron("H * * * *", f"job-{i}").next_after(NOW)
        assert fired is not None and fired.minute == minute and fired > NOW
        assert (fired - NOW).total_seconds() <= 3600


def test_h_with_range_and_step() -> None:
    ranged = parse_cron("H(0-29) * * * *", "svc")
    assert len(ranged.minutes) == 1 and next(iter(ranged.minutes)) <= 29
    stepped = parse_cron("H/15 * * * *", "svc")
    values = sorted(stepped.minutes)
    assert len(values) == 4 and values[0] < 15
    assert [b - a for a, b in itertools.pairwise(values)] == [15, 15, 15]
    assert parse_cron("H/15 * * * *", "svc") == stepped


def test_aliases_plain_fields_and_time_zones() -> None:
    daily = parse_cron("@daily", "nightly")
    assert len(daily.minutes) == 1 and len(daily.hours) == 1
    every = parse_cron("*/20 9-17 * * 1-5", "x")
    assert every.minutes == {0, 20, 40} and every.hours == set(range(9, 18))
    assert every.next_after(NOW) == datetime(2026, 3, 2, 10, 20, tzinfo=UTC)
    # 02:30 in Berlin (UTC+1 in March before DST) is 01:30 UTC.
    berlin = parse_cron("TZ=Europe/Berlin\n30 2 * * *", "x")
    assert berlin.next_after(NOW) == datetime(2026, 3, 3, 1, 30, tzinfo=UTC)
    same = parse_cron("30 2 * * *", "x", timezone="Europe/Berlin")
    assert same.next_after(NOW) == berlin.next_after(NOW)
    sunday = parse_cron("0 0 * * 7", "x").next_after(NOW)
    assert sunday == datetime(2026, 3, 8, 0, 0, tzinfo=UTC)
    assert parse_cron("0 0 30 2 *", "x").next_after(NOW) is None


def test_fires_between_collapses_missed_firings() -> None:
    hourly = parse_cron("5 * * * *", "x")
    start = datetime(2026, 3, 2, 7, 0, tzinfo=UTC)
    assert hourly.fires_between(start, NOW) == datetime(2026, 3, 2, 10, 5, tzinfo=UTC)
    assert hourly.fires_between(NOW, NOW) is None


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("* * * *", "expected 5 fields"),
        ("60 * * * *", "minute"),
        ("H(30-20) * * * *", "minute"),
        ("x * * * *", "cannot read"),
        ("@often", "unknown alias"),
        ("TZ=Mars/Olympus\n* * * * *", "unknown time zone"),
        ("*/0 * * * *", "step"),
    ],
)
def test_bad_specs_say_why(spec: str, fragment: str) -> None:
    with pytest.raises(CronError, match=fragment):
        parse_cron(spec, "x")
