"""Yes / no settings as they arrive from configs and command lines.

``python -m monai.bundle run ... --importance_weights false`` hands the config the *string* ``"false"``,
and ``bool("false")`` is True: a switch turned off on the command line would silently stay on.
:func:`flag` reads booleans, 0 / 1 and the usual words, and refuses anything else by name.
"""

from __future__ import annotations

_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def flag(value, name: str = "setting") -> bool:
    """``value`` as a bool: a bool, 0 / 1, or (any case) true / false, yes / no, on / off.

    Raises:
        ValueError: naming ``name`` for anything else (e.g. ``"flase"``, ``None``, 2).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _WORDS:
        return _WORDS[value.strip().lower()]
    raise ValueError(f"{name} must be true or false, got {value!r}")
