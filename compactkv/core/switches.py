"""On/off settings given as text (COMPACTKV_* environment variables, profile values): one parser for every layer,
so "false", "no" and "off" mean off wherever a switch is read, and a value that is neither is refused by name."""

from __future__ import annotations

import os

SWITCH_VALUES = "1/true/yes/on or 0/false/no/off"


def switch(text: str) -> bool:
    """SWITCH_VALUES, any case, surrounding spaces ignored; ValueError otherwise."""
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not {SWITCH_VALUES}")


def env_switch(name: str, default: bool = False) -> bool:
    """$COMPACTKV_<NAME> as a switch (unset or empty: default); ValueError naming the variable and the accepted
    values."""
    text = os.environ.get(f"COMPACTKV_{name}")
    if not text:
        return default
    try:
        return switch(text)
    except ValueError:
        raise ValueError(f"COMPACTKV_{name}={text!r} is not a valid switch ({SWITCH_VALUES})") from None
