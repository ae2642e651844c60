"""SQL text helpers every layer may use: a query with its bound values, quoted identifiers, JSON
pointers, naive-UTC times. Pure, and free of the cohort compiler, so loading can import them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class Query:
    sql: str
    params: dict

    def __iter__(self):      # sql, params = compile_cohort(...)
        return iter((self.sql, self.params))


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def json_pointer(name: str) -> str:
    """The JSON Pointer addressing top-level key ``name`` (any characters allowed)."""
    return "/" + name.replace("~", "~0").replace("/", "~1")


def md5_key(text: str) -> str:
    """SQL: a 64-bit number of the text SQL ``text`` (UBIGINT), for keys stored and compared as numbers
    (dedup keys, identity link ids). It is ``md5_number_lower(text)``, the same value in every DuckDB
    version (tests/test_store.py checks it), written with the 128-bit MD5 number because DuckDB 2.0 makes
    md5_number_lower a macro over bit strings: 0.50 s per million ids instead of 0.09 s."""
    return f"(md5_number({text}) >> 64)::UBIGINT"


def to_utc_naive(moment: dt.datetime) -> dt.datetime:
    """Stored times are naive UTC; an aware ``now`` is converted, a naive one is taken as UTC."""
    return moment.astimezone(dt.UTC).replace(tzinfo=None) if moment.tzinfo else moment
