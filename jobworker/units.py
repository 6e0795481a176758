"""Sizes as people write them (512M, 2G): shared by the server and jw (pure)."""

from __future__ import annotations

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parseSize(text: str) -> int:
    """C{"1G"}, C{"512M"}, C{"65536"} -> bytes (binary units).

    @raise ValueError: not a size.
    """
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in _SIZE_UNITS else ""
    number = value[: len(value) - len(unit)]
    if not (number.isascii() and number.isdigit()):  # ("²" is a digit to Python)
        raise ValueError(f"not a size: {text!r} (e.g. 1G, 512M, 65536)")
    return int(number) * _SIZE_UNITS[unit]


def sizeText(size: int) -> str:
    """Bytes as people write them: C{104857600} -> C{100M} (the largest
    unit that divides it; else C{1.5G}-like, one decimal)."""
    for unit in ("T", "G", "M", "K"):
        scale = _SIZE_UNITS[unit]
        if size >= scale:
            if size % scale == 0:
                return f"{size // scale}{unit}"
            return f"{size / scale:.1f}{unit}"
    return str(size)
