"""SLA_POLICY_FILE: what a valid file means, that every error names its line, and that without a
file the policy is exactly the historical one (urgent first response = SLA_URGENT_SECONDS)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import pytest

from api.cli import ROOT
from domain.lifecycle import Priority
from domain.policies import TimePolicy, time_policy
from domain.settings import ConfigError, load_settings
from domain.sla_policy import SlaPolicy, Target, Targets, parse_duration, parse_policy

EXAMPLE = ROOT / "docs" / "sla-policy.example.toml"


def test_without_a_file_the_policy_is_todays() -> None:
    settings = load_settings({"SLA_URGENT_SECONDS": "120"})
    policy = time_policy(settings)
    assert policy.sla is None
    slas = policy.slas
    assert slas == SlaPolicy(
        targets={Priority.URGENT: Targets(first_response=timedelta(minutes=2))}
    )
    assert slas.calendar is None and slas.warn_share is None
    for priority in Priority:
        for target in Target:
            expected = (
                timedelta(minutes=2)
                if (priority, target) == (Priority.URGENT, Target.FIRST_RESPONSE)
                else None
            )
            assert slas.target(priority, target) == expected
    # Positional construction, as before, still means the default policy.
    assert TimePolicy(timedelta(seconds=5), timedelta(days=7)).slas.target(
        "urgent", Target.FIRST_RESPONSE
    ) == timedelta(seconds=5)


def test_the_example_file_loads(tmp_path: Path) -> None:
    settings = replace(load_settings({}), sla_policy_file=str(EXAMPLE))
    slas = time_policy(settings).slas
    assert slas.warn_share == 0.8
    assert slas.target("urgent", Target.NEXT_RESPONSE) == timedelta(hours=2)
    assert slas.target("high", Target.NEXT_RESPONSE) is None
    assert slas.target("low", Target.FIRST_RESPONSE) is None
    assert slas.calendar is not None
    assert slas.calendar.zone.key == "Europe/Berlin"
    assert slas.calendar.hours[4] == ((9 * 60, 12 * 60), (13 * 60, 17 * 60))
    assert 5 not in slas.calendar.hours and 6 not in slas.calendar.hours
    assert date(2026, 12, 25) in slas.calendar.holidays


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1h", timedelta(hours=1)),
        ("30m", timedelta(minutes=30)),
        ("2d", timedelta(days=2)),
        ("1h30m", timedelta(minutes=90)),
        ("90s", timedelta(seconds=90)),
        (3600, timedelta(hours=1)),
        (0.5, timedelta(seconds=0.5)),
    ],
)
def test_durations(raw: object, expected: timedelta) -> None:
    assert parse_duration(raw) == expected


@pytest.mark.parametrize("raw", ["", "1x", "-1h", "h", 0, -5, True, "1 hour"])
def test_bad_durations(raw: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(raw)


BAD_FILES = [
    # (file text, the line the error must name, words the message must contain)
    (
        'warn_at = 0.8\n[urgent]\nfirst_response = "1h"\n[critical]\nfirst_response = "1h"\n',
        4,
        "unknown priority or setting 'critical'",
    ),
    ('[urgent]\nfirst_response = "1h"\nresolution = "-2h"\n', 3, "urgent.resolution"),
    ('[urgent]\nfirst_response = "1h"\n\n[high]\nfirst_reply = "4h"\n', 5, "unknown target"),
    ("[urgent]\nfirst_response = 0\n", 2, "must be positive"),
    ("warn_at = 1.5\n", 1, "warn_at"),
    (
        '[urgent]\nfirst_response = "1h"\n[calendar]\ntimezone = "Mars/Olympus"\n'
        'hours = { mon = "09:00-17:00" }\n',
        4,
        "unknown time zone",
    ),
    ('[calendar]\ntimezone = "Europe/Berlin"\nhours = { mon = "17:00-09:00" }\n', 3, "hours.mon"),
    ('[calendar]\ntimezone = "Europe/Berlin"\nhours = { mon = "9-5" }\n', 3, "hours.mon"),
    (
        '[calendar]\ntimezone = "Europe/Berlin"\nhours = { funday = "09:00-17:00" }\n',
        3,
        "unknown weekday",
    ),
    ('[calendar]\ntimezone = "Europe/Berlin"\nhours = { mon = "" }\n', 3, "no opening hours"),
    (
        '[calendar]\ntimezone = "Europe/Berlin"\nhours = { mon = "09:00-17:00" }\n'
        'holidays = ["2026-13-01"]\n',
        4,
        "holiday",
    ),
    (
        '[calendar]\ntimezone = "Europe/Berlin"\nhours = { mon = "09:00-17:00" }\nopen = 1\n',
        4,
        "unknown calendar key",
    ),
    ('[urgent]\nfirst_response = "1h"\nfirst_response = "2h"\n', 3, "not valid TOML"),
    ('[urgent\nfirst_response = "1h"\n', 1, "not valid TOML"),
]


@pytest.mark.parametrize(("text", "line", "words"), BAD_FILES)
def test_errors_name_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_policy(text, name="policy.toml")
    message = str(raised.value)
    assert message.startswith(f"SLA_POLICY_FILE line {line}: "), message
    assert words in message


def test_a_bad_file_stops_the_process_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[urgent]\nfirst_response = "soon"\n')
    with pytest.raises(ConfigError, match="line 2"):
        time_policy(load_settings({"SLA_POLICY_FILE": str(path)}))
    with pytest.raises(ConfigError, match="cannot be read"):
        time_policy(load_settings({"SLA_POLICY_FILE": str(tmp_path / "missing.toml")}))


def test_fingerprint_changes_with_the_policy() -> None:
    one = parse_policy('[urgent]\nfirst_response = "1h"\n')
    two = parse_policy('[urgent]\nfirst_response = "2h"\n')
    assert one.fingerprint == parse_policy("[urgent]\nfirst_response = 3600\n").fingerprint
    assert one.fingerprint != two.fingerprint
