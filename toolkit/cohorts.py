"""Cohorts: definitions from YAML/JSON files, stored and versioned in the store, evaluated as of now.

The pure parts live beside this module: ``cohort_model`` (the dataclasses, validation, canonical form)
and ``cohort_sql`` (definition -> SQL). This module is the shell around them: it reads files (the
definitions and static cohorts' CSVs), reads and writes the ``cohorts`` table, and executes the SQL.

    defs = cohorts.load_definitions("data/sample/cohorts.yaml")
    cohorts.save_all(store, defs)                       # version 1, or unchanged
    cohorts.evaluate(store, "Pro plan in the US", now=datetime(2026, 11, 1, tzinfo=timezone.utc))
"""

from __future__ import annotations

import csv
import datetime as dt
import difflib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from toolkit import event_columns
from toolkit.cohort_model import (
    Cohort,
    CohortCycleError,
    CohortError,
    CohortRule,
    DefinitionError,
    EventRule,
    Group,
    PropertyRule,
    check_cycles,
    normalize,
    parse,
    references,
    to_dict,
)
from toolkit.cohort_sql import Query, compile_cohort, filtered_properties, to_utc_naive
from toolkit.store import Store, connection

__all__ = ["Cohort", "EventRule", "PropertyRule", "CohortRule", "Group", "CohortError",
           "DefinitionError", "CohortCycleError", "load_definitions", "read_ids_csv", "save", "save_all",
           "list_cohorts", "get", "resolve_name", "version_of", "evaluate", "query", "describe", "by_name",
           "to_dict", "parse"]

ID_HEADERS = ("distinct_id", "$distinct_id", "distinct id")
MAX_DEFINITION_BYTES = 1 << 20   # a definitions file larger than this is refused unread
MAX_YAML_NODES = 100_000         # values a YAML file may hold once its aliases are expanded


# -- definition files --------------------------------------------------------------------------------

def load_definitions(path: str | os.PathLike, *, csv_folders: Iterable[str | os.PathLike] = ()) -> list[Cohort]:
    """Read a YAML or JSON file of cohorts (``{"cohorts": [...]}`` or a bare list), check every one, read
    static cohorts' CSV files (relative to the definition file) and refuse reference cycles.

    A static cohort's CSV must lie in the definition file's folder (or below it), or in one of
    ``csv_folders``, links resolved: a definitions file cannot make the toolkit read any file it names."""
    path = Path(path)
    data = _read_document(path)
    items = data.get("cohorts") if isinstance(data, Mapping) else data
    if not isinstance(items, list):
        raise CohortError(f"{path}: expected a list of cohorts under the key 'cohorts'")
    found: dict[str, Cohort] = {}
    for i, item in enumerate(items):
        name = item.get("name") if isinstance(item, Mapping) else None
        if not isinstance(name, str) or not name.strip():
            raise DefinitionError(str(path), f"cohorts[{i}].name", f"expected a non-empty cohort name, got {name!r}")
        if name in found:
            raise DefinitionError(str(path), f"cohorts[{i}].name", f'cohort "{name}" is defined twice')
        if isinstance(item.get("static_csv"), str) and "static_ids" not in item:
            try:
                csv_path = _confined(path.parent / item["static_csv"], [path.parent, *map(Path, csv_folders)])
                item = {**item, "static_ids": read_ids_csv(csv_path)}
            except CohortError as exc:
                raise DefinitionError(f'{path}: cohort "{name}"', "static_csv", str(exc)) from None
        found[name] = parse(item, str(path))
    check_cycles(found, str(path))
    return list(found.values())


def _confined(csv_path: Path, folders: list[Path]) -> Path:
    """``csv_path`` when it resolves (links followed) into one of ``folders``; else a CohortError."""
    real = csv_path.resolve()
    if any(real.is_relative_to(folder.resolve()) for folder in folders):
        return real
    allowed = " or ".join(str(folder.resolve()) for folder in folders)
    raise CohortError(f"{csv_path} is outside the folder of the definitions ({allowed}); "
                      "put the CSV beside the definitions file")


def read_ids_csv(path: str | os.PathLike) -> list[str]:
    """distinct_ids from a CSV: the column headed distinct_id / $distinct_id (Mixpanel's export), else the
    first column of a header-less file. Blank lines are skipped; an empty id cell is an error."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise CohortError(f"{path}: not a regular file")
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CohortError(f"{path}: cannot read: {exc}") from exc
    numbered = [(n, row) for n, row in enumerate(rows, 1) if any(cell.strip() for cell in row)]
    if not numbered:
        raise CohortError(f"{path}: no distinct_ids (the file is empty)")
    header = [cell.strip().lower() for cell in numbered[0][1]]
    column = next((header.index(h) for h in ID_HEADERS if h in header), None)
    if column is not None:
        numbered = numbered[1:]
    column = column or 0
    ids = []
    for n, row in numbered:
        value = row[column].strip() if column < len(row) else ""
        if not value:
            raise CohortError(f"{path}: line {n}: empty distinct_id in column {column + 1}")
        ids.append(value)
    if not ids:
        raise CohortError(f"{path}: no distinct_ids below the header")
    return ids


def _read_document(path: Path):
    try:
        size = path.stat().st_size
        if size > MAX_DEFINITION_BYTES:
            raise CohortError(f"{path}: {size} bytes is too large for a definitions file "
                              f"(at most {MAX_DEFINITION_BYTES >> 20} MiB)")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CohortError(f"{path}: cannot read: {exc}") from exc
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            return _read_yaml(path, text)
        if suffix == ".json":
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise CohortError(f"{path}: not valid JSON: line {exc.lineno}: {exc.msg}") from exc
    except RecursionError:
        raise CohortError(f"{path}: nested too deeply to be a cohort definition") from None
    raise CohortError(f"{path}: unknown definition format; expected .yaml, .yml or .json")


def _read_yaml(path: Path, text: str):
    """YAML with its aliases counted as what they expand to: a few hundred bytes of nested aliases
    (an "alias bomb") expand to billions of values, which reading the definitions would then walk."""
    try:
        import yaml
    except ImportError:
        raise CohortError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); "
                          "or write the definitions as JSON") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        _count_yaml_nodes(path, root)
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CohortError(f"{path}: not valid YAML: {exc}") from exc


def _count_yaml_nodes(path: Path, root) -> int:
    """Values under ``root`` with every alias expanded, counted without expanding them (each node
    once); refuses more than `MAX_YAML_NODES` and an alias inside itself."""
    import yaml

    sizes: dict[int, int] = {}   # id(node) -> its expanded size, or `visiting` while under way
    visiting = -1

    def size(node) -> int:
        known = sizes.get(id(node))
        if known == visiting:
            raise CohortError(f"{path}: line {node.start_mark.line + 1}: a YAML alias refers to itself")
        if known is not None:
            return known
        sizes[id(node)] = visiting
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(v) for v in node.value)
        else:
            total = 1
        if total > MAX_YAML_NODES:
            raise CohortError(f"{path}: line {node.start_mark.line + 1}: expands to over {MAX_YAML_NODES:,} "
                              "values (YAML aliases repeated inside each other); write the cohorts out")
        sizes[id(node)] = total
        return total

    return size(root) if root is not None else 0


# -- the store ---------------------------------------------------------------------------------------

def save(store: Store, cohort: Cohort | Mapping, *, now: dt.datetime | None = None, where: str = "") -> int:
    """Store a definition; returns its version. An unchanged definition keeps its version; a changed one
    gets the next. Refuses a definition that names a cohort the store does not hold, or that would close
    a reference cycle with the stored ones."""
    return save_all(store, [cohort], now=now, where=where)[_name(cohort)]


def save_all(store: Store, definitions: Iterable[Cohort | Mapping], *,
             now: dt.datetime | None = None, where: str = "") -> dict[str, int]:
    """Save several definitions at once (all or nothing); returns name -> version. Every cohort an
    in_cohort / not_in_cohort rule names must be among ``definitions`` or already stored, so a broken
    reference is refused here rather than failing the scheduled sync later. ``where`` (e.g. the file the
    definitions came from) prefixes errors."""
    con = connection(store)
    new = {c.name: c for c in (normalize(d) for d in definitions)}
    stored = {name: c for name, (c, _) in _latest(con).items()}
    check_references(new, stored, where)
    check_cycles({**stored, **new}, where)
    created = to_utc_naive(now or dt.datetime.now(dt.UTC))
    versions = {}
    with store.transaction():
        for name, cohort in new.items():
            text = _canonical(to_dict(cohort))
            row = con.execute("SELECT version, definition FROM cohorts WHERE name = ? "
                              "ORDER BY version DESC LIMIT 1", [name]).fetchone()
            if row and _canonical(json.loads(row[1])) == text:
                versions[name] = row[0]
                continue
            versions[name] = (row[0] if row else 0) + 1
            con.execute("INSERT INTO cohorts VALUES (?, ?, ?, ?)", [name, versions[name], text, created])
    return versions


def check_references(new: Mapping[str, Cohort], stored: Mapping[str, Cohort], where: str = "") -> None:
    """Refuse definitions naming cohorts that are neither among ``new`` nor in ``stored``: one error
    listing each cohort, the rule's field and the missing name (with a close match when there is one)."""
    known = {**stored, **new}
    problems = []
    for name, cohort in new.items():
        for path, ref in references(cohort):
            if ref not in known:
                hint = _did_you_mean(ref, list(known))
                problems.append(f'cohort "{name}": {path}: no cohort named "{ref}" among these definitions '
                                f"or in the store{hint}")
    if problems:
        prefix = f"{where}: " if where else ""
        raise CohortError(prefix + ("\n" + prefix).join(problems) + "\nnothing was saved")


def list_cohorts(store: Store) -> list[dict]:
    """The latest version of every stored cohort, by name: name, version, versions, created_at, kind,
    description and a one-line summary of the rules."""
    con = connection(store)
    rows = con.execute("""
        SELECT name, max(version), count(*), arg_max(created_at, version)
        FROM cohorts GROUP BY name ORDER BY name""").fetchall()
    latest = _latest(con)
    out = []
    for name, version, versions, created in rows:
        cohort = latest[name][0]
        out.append({"name": name, "version": version, "versions": versions,
                    "created_at": created.isoformat(), "kind": "static" if cohort.is_static else "dynamic",
                    "description": cohort.description, "summary": describe(cohort)})
    return out


def get(store: Store, name: str, version: int | None = None) -> Cohort:
    """A stored definition (the latest version unless ``version`` is given). ``name`` is matched
    exactly, else ignoring case when that picks one cohort (see ``resolve_name``)."""
    con = connection(store)
    name = resolve_name(store, name)
    sql = "SELECT definition FROM cohorts WHERE name = ?" + (" AND version = ?" if version else "")
    row = con.execute(sql + " ORDER BY version DESC LIMIT 1", [name] + ([version] if version else [])).fetchone()
    if row is None:
        raise CohortError(f'no version {version} of cohort "{name}" in the store; it has versions 1 to '
                          f"{version_of(store, name)}")
    return parse(json.loads(row[0]), "store")


def resolve_name(store: Store, name: str) -> str:
    """The stored cohort ``name`` means: itself, else the one cohort whose name differs only in case.
    Otherwise a CohortError that lists the close matches ("did you mean") or the known names."""
    con = connection(store)
    names = [n for n, in con.execute("SELECT DISTINCT name FROM cohorts ORDER BY name").fetchall()]
    if name in names:
        return name
    same = [n for n in names if n.casefold() == name.casefold()]
    if len(same) == 1:
        return same[0]
    if same:
        raise CohortError(f'"{name}" matches {len(same)} cohorts that differ only in case: '
                          + ", ".join(f'"{n}"' for n in same) + "; give the exact name")
    hint = _did_you_mean(name, names)
    if not hint:
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        hint = f"; known: {shown}" if names else "; the store holds no cohorts yet"
    raise CohortError(f'no cohort "{name}" in the store{hint} (store definitions with: toolkit cohorts load FILE)')


def _did_you_mean(name: str, names: list[str]) -> str:
    """'; did you mean "A" or "B"?' for names close to ``name`` (ignoring case), else ''."""
    folded = {n.casefold(): n for n in names}
    close = [folded[n] for n in difflib.get_close_matches(name.casefold(), list(folded), n=3, cutoff=0.6)]
    return "; did you mean " + " or ".join(f'"{n}"' for n in close) + "?" if close else ""


def version_of(store: Store, name: str) -> int | None:
    con = connection(store)
    return con.execute("SELECT max(version) FROM cohorts WHERE name = ?", [name]).fetchone()[0]


# -- evaluation --------------------------------------------------------------------------------------

def query(store: Store, cohort: Cohort | str, *, now: dt.datetime | None = None,
          definitions: Iterable[Cohort] | Mapping[str, Cohort] | None = None, typed_columns: bool = True,
          on_store: bool = False) -> Query:
    """The compiled query for a cohort (by name or definition). Referenced cohorts come from
    ``definitions`` first, then the store. Their definitions are fetched here, so compiling stays pure.
    The event properties its filters read are kept as typed columns first (once per property and
    event: ``event_columns.ensure``), so the query reads those instead of the JSON. ``typed_columns=False``
    reads the JSON only: the query for an engine holding the raw events (a lake, a warehouse).
    ``on_store``: the query is run on this store (it may read the ``profiles`` table, which other
    engines do not hold: cohort_sql.compile_cohort); by default it reads only what toolkit/dialects.py lists."""
    defs = by_name(definitions)
    root = normalize(cohort) if not isinstance(cohort, str) else defs.get(cohort) or get(store, cohort)
    closure = _closure(store, root, defs)
    columns = event_columns.ensure(store, filtered_properties(closure.values())) if typed_columns else {}
    return compile_cohort(root, now or dt.datetime.now(dt.UTC), closure, columns=columns, on_store=on_store)


def evaluate(store: Store, cohort: Cohort | str, *, now: dt.datetime | None = None,
             definitions: Iterable[Cohort] | Mapping[str, Cohort] | None = None) -> list[str]:
    """The cohort's members as of ``now`` (default: the current time): canonical distinct_ids, sorted."""
    con = connection(store)
    sql, params = query(store, cohort, now=now, definitions=definitions, on_store=True)
    return [row[0] for row in con.execute(sql, params).fetchall()]


def _closure(store: Store, root: Cohort, defs: Mapping[str, Cohort]) -> dict[str, Cohort]:
    """Every cohort reachable through in_cohort / not_in_cohort from ``root``."""
    found: dict[str, Cohort] = {root.name: root}
    todo = [root]
    while todo:
        for _path, name in references(todo.pop()):
            if name in found:
                continue
            cohort = defs.get(name)
            if cohort is None and version_of(store, name) is not None:
                cohort = get(store, name)
            if cohort is not None:      # unknown names are reported by the compiler, with their path
                found[name] = cohort
                todo.append(cohort)
    return found


# -- a one-line rendering for lists and previews -------------------------------------------------------

def describe(cohort: Cohort) -> str:
    if cohort.is_static:
        source = f" from {cohort.static_csv}" if cohort.static_csv else ""
        return f"static: {len(cohort.static_ids or ())} ids{source}"
    return _describe_rules(cohort.rules, cohort.match)


def _describe_rules(rules, match: str) -> str:
    return f" {match.upper().replace('ALL', 'AND').replace('ANY', 'OR')} ".join(_describe(r) for r in rules)


def _describe(r) -> str:
    if isinstance(r, Group):
        return f"({_describe_rules(r.rules, r.match)})"
    if isinstance(r, CohortRule):
        return f'{"in" if r.include else "not in"} cohort "{r.cohort}"'
    if isinstance(r, PropertyRule):
        if r.operator in ("is_set", "is_not_set"):
            return f"{r.property} {r.operator.replace('_', ' ')}"
        value = (" and ".join(map(_literal, r.value)) if r.operator == "between"
                 else " or ".join(map(_literal, r.value)) if isinstance(r.value, tuple) else _literal(r.value))
        return f"{r.property} {r.operator.replace('_', ' ')} {value}"
    if isinstance(r, EventRule):
        text = f'{"did" if r.did else "did not do"} "{r.event}"'
        if (r.operator, r.count) != ("at_least", 1):
            text += f' {r.operator.replace("_", " ")} {r.count} time{"" if r.count == 1 else "s"}'
        if r.last_days:
            text += f" in the last {r.last_days} days"
        elif r.first_time_last_days:
            text += f" for the first time in the last {r.first_time_last_days} days"
        elif r.between:
            text += f" between {r.between[0]} and {r.between[1]}"
        if r.where:
            text += " where " + " and ".join(_describe(f) for f in r.where)
        return text
    return repr(r)


def _literal(v) -> str:
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, bool):
        return str(v).lower()
    return v.isoformat() if isinstance(v, dt.date) else str(v)


# -- helpers -----------------------------------------------------------------------------------------

def _latest(con) -> dict[str, tuple[Cohort, int]]:
    rows = con.execute("SELECT name, arg_max(definition, version), max(version) FROM cohorts GROUP BY name"
                       ).fetchall()
    return {name: (parse(json.loads(text), "store"), version) for name, text, version in rows}


def _canonical(data: dict) -> str:
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def by_name(definitions) -> dict[str, Cohort]:
    """Definitions (a list or a mapping, dicts or Cohorts) checked and keyed by name."""
    if definitions is None:
        return {}
    items = definitions.values() if isinstance(definitions, Mapping) else definitions
    return {c.name: c for c in (normalize(d) for d in items)}


def _name(cohort) -> str:
    return cohort.name if isinstance(cohort, Cohort) else normalize(cohort).name
