"""Tools that ship with Voxline, registered as entry points (group `voxline.tools`)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_NAMES = dict(zip(_DAYS, ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday",
                          "Sunday"], strict=True))


def business_hours(profile_dir: Path, now: dt.datetime | None = None) -> dict[str, Any]:
    """Whether the contact center is open now, from `hours.yaml` in the profile folder
    (timezone, opens, closes, days), default Monday to Friday 9:00-17:00 UTC."""
    path = Path(profile_dir) / "hours.yaml"
    cfg = yaml.safe_load(path.read_text()) if path.is_file() else {}
    tz = ZoneInfo(cfg.get("timezone", "UTC"))
    opens = dt.time.fromisoformat(cfg.get("opens", "09:00"))
    closes = dt.time.fromisoformat(cfg.get("closes", "17:00"))
    days = [d.lower()[:3] for d in cfg.get("days", _DAYS[:5])]
    now = (now or dt.datetime.now(tz)).astimezone(tz)
    is_open = _DAYS[now.weekday()] in days and opens <= now.time() < closes
    hours = f"{opens:%-I:%M %p} to {closes:%-I:%M %p}".replace(":00", "")
    say = (f"We're open now, until {closes:%-I:%M %p}.".replace(":00", "") if is_open
           else f"We're closed right now. Our hours are {hours}, "
                f"{_NAMES[days[0]]} to {_NAMES[days[-1]]}.")
    return {"open": is_open, "opens": str(opens), "closes": str(closes), "say": say}
