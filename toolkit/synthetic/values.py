"""Values drawn from the generator's one ``random.Random``, and the one JSON encoder every value goes through."""

from __future__ import annotations

import json
import random
import unicodedata
from collections.abc import Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")

encode = json.JSONEncoder(ensure_ascii=False).encode  # one encoder: json.dumps(**kw) builds one per call


def weighted(pairs: Iterable[tuple[T, int]]) -> list[T]:
    """A lookup table for a weighted choice with one random(): [(value, weight)] -> values repeated."""
    return [v for v, w in pairs for _ in range(w)]


def pick(rng: random.Random, table: Sequence[T]) -> T:
    return table[int(rng.random() * len(table))]


_V4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_V4_SET = (0x4000 << 64) | (0x8000 << 48)


def uuid4(rng: random.Random) -> str:
    """A random UUIDv4 (version and variant bits set) from 128 bits of ``rng``."""
    h = f"{(rng.getrandbits(128) & _V4_CLEAR) | _V4_SET:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_TRANSLIT = str.maketrans({"ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "'": ""})


def ascii_name(text: str) -> str:
    """'Łukasz.O'Brien' -> 'lukasz.obrien' (for e-mail addresses)."""
    return unicodedata.normalize("NFKD", text.translate(_TRANSLIT)).encode("ascii", "ignore").decode().lower()
