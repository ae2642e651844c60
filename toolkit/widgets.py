"""ipywidgets panels for the notebooks: connect to OneSignal, explore a cohort's matchability, export it.

    from toolkit import widgets
    connection = widgets.connect_panel(store_path)     # API address, App ID, API key, Connect -> "Connected"
    widgets.cohort_explorer(store_path)                # size, funnel, reasons, searchable members
    widgets.export_panel(store_path, connection)       # preview the diff, export with progress, each sync's
                                                       # state and match rate, members CSV, stop / pause / resume

With ``mixpanel="<project id>"`` (or the sync notebook's ``{"project_id", ...}``), the cohort lists hold the
project's Mixpanel cohorts beside the local ones; picking one not kept yet keeps it as a toolkit cohort (its
members from Engage), which the panel then previews and exports like any other.

Panels take the store's path and open it for each action only (refresh, preview, export, stop), read-only
where the action only reads, so an open notebook never keeps other notebooks, ``toolkit sync`` or an
export out of the store (DuckDB lets one process write a file, or many read it, never both at once).
While another process holds the store, the panel's status line says who and that it is waiting. An
open ``Store`` is accepted too (tests): it is used as is, and stays open.

The panels only wire controls to the toolkit (``sync``, ``export``, ``matching``, ``report``,
``cohorts``); they hold no business rules of their own. Each panel is a small object whose controls
are attributes, so tests drive it headlessly: set ``.value``, call ``.click()``, read labels and
outputs. Display it with ``display(panel)`` or as a cell's last expression (``panel.widget`` is the
container).

The API key is typed into a ``Password`` field, which is cleared as soon as Connect is pressed:
widget state is saved into notebooks, so the key lives only in memory, on ``ConnectPanel.credentials``.
"""

from __future__ import annotations

import base64
import html
import io
import os
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

try:
    import ipywidgets as w
except ImportError as exc:      # an optional dependency: say how to get it
    raise ImportError("toolkit.widgets needs ipywidgets 8, from the notebooks extra: "
                      "pip install 'toolkit[notebooks]'") from exc

from toolkit import cohorts, credentials, export, matching, report, sync
from toolkit.engine import STORE, EngineChoice, Evaluator
from toolkit.errors import ToolkitError, UsageError
from toolkit.onesignal import DEFAULT_BASE_URL, REDACTED, Credentials, default_base_url
from toolkit.onesignal_ids import REASONS
from toolkit.store import Store, using

__all__ = ["connect_panel", "cohort_explorer", "export_panel", "ConnectPanel", "CohortExplorer",
           "ExportPanel", "funnel", "filter_members"]

ROWS = 50          # member rows shown in the explorer's table
LONGEST = 48       # characters of a value shown in the member table (the search still sees all of it)
MODES = [("One-time", "once"), ("Dynamic", "dynamic")]


# -- the pure bits the panels show --------------------------------------------------------------------

def funnel(summary: dict) -> list[tuple[str, int]]:
    """A matchability summary as funnel steps: each step drops the members lost to one reason."""
    reasons = summary["reasons"]
    members = summary["members"]
    identified = members - reasons["anonymous"]
    with_id = identified - reasons["missing_user_id"]
    valid = with_id - reasons["unusable_value"]
    return [("members", members), ("identified", identified), ("with user id", with_id),
            ("valid id", valid), ("exportable", summary["exportable"])]


def filter_members(frame: pd.DataFrame, text: str) -> pd.DataFrame:
    """Members whose distinct_id or status (the reason, or "exportable") contains ``text``, any case."""
    status = frame["reason"].where(~frame["exportable"], "exportable").fillna("exportable")
    shown = frame.assign(status=status)[["distinct_id", "status", "onesignal_id", "id_type", "detail"]]
    text = (text or "").strip()
    if not text:
        return shown
    hit = (shown["distinct_id"].astype(str).str.contains(text, case=False, regex=False)
           | shown["status"].str.contains(text, case=False, regex=False))
    return shown[hit]


# -- helpers ----------------------------------------------------------------------------------------

def _as_time(now: datetime | str | None) -> datetime | None:
    """Notebooks pass papermill parameters through as ISO text."""
    return datetime.fromisoformat(now) if isinstance(now, str) else now


def _cohort_names(store) -> list[str]:
    return [c["name"] for c in cohorts.list_cohorts(store)]


def _set_cohorts(dropdown: w.Dropdown, names: list, mixpanel: list[dict] | None = None) -> None:
    """The cohort list, the first one selected when none was (as a Dropdown made with them would). With
    ``mixpanel`` (`mixpanel.cohorts.choices`), kept Mixpanel cohorts say so and the others follow, valued
    ``mixpanel:<id>`` (never selected unasked: picking one keeps it)."""
    options = _cohort_options(names, mixpanel) if mixpanel is not None else names
    _set_options(dropdown, options)
    if dropdown.value is None and names:
        dropdown.value = names[0]


MIXPANEL_PICK = "mixpanel:"     # a dropdown value: a Mixpanel cohort not kept as a toolkit cohort yet


def _cohort_options(names: list[str], mixpanel: list[dict]) -> list[tuple[str, str]]:
    kept = {c["kept_as"]: c for c in mixpanel if c["kept_as"]}
    options = [(f"{name} (Mixpanel cohort {kept[name]['id']})" if name in kept else name, name) for name in names]
    return options + [(f"{c['name']} (Mixpanel cohort {c['id']}, {c['count'] if c['count'] is not None else '?'}"
                       " members: pick to use it here)", f"{MIXPANEL_PICK}{c['id']}")
                      for c in mixpanel if not c["kept_as"]]


def _set_options(dropdown: w.Dropdown, options: list) -> None:
    """New options, keeping the selection when it is still there, else selecting nothing (ipywidgets
    would select the first option: an unrelated cohort)."""
    if tuple(options) != tuple(dropdown.options):
        keep = dropdown.value
        dropdown.options = options
        values = [o[1] if isinstance(o, tuple) else o for o in options]
        dropdown.value = keep if keep in values else None


class _MixpanelCohorts:
    """A panel's Mixpanel project: its cohorts listed (one query per refresh: the Query API allows 60 an hour)
    and, when one not kept yet is picked, kept as a toolkit cohort. The service account comes from the
    environment or the 0600 file."""

    def __init__(self, project):
        from toolkit.mixpanel.scheduled import Project

        found = Project.of(project)
        if found is None:
            raise UsageError("mixpanel: give the Mixpanel project id")
        self.project = found
        self.error = ""         # why the list could not be read (the local cohorts still show)

    def _client(self):
        from toolkit.mixpanel.client import MixpanelClient

        account = credentials.require_mixpanel(self.project.project_id, region=self.project.region)
        return MixpanelClient(account, self.project.base_url)

    def choices(self, store) -> list[dict]:
        from toolkit.mixpanel import cohorts as mixpanel_cohorts

        try:
            with self._client() as client:
                found = mixpanel_cohorts.choices(store, client)
        except ToolkitError as exc:
            self.error = f"Mixpanel cohorts not listed: {exc}"
            return []
        self.error = ""
        return found

    def keep(self, store, value: str) -> str:
        """Keep the picked Mixpanel cohort (``mixpanel:<id>``); its toolkit name."""
        from toolkit.mixpanel import cohorts as mixpanel_cohorts

        with self._client() as client:
            return mixpanel_cohorts.adopt(store, client, int(value.removeprefix(MIXPANEL_PICK))).name


def _pre(text: str) -> str:
    """Preformatted text that wraps at the panel's edge instead of running off it."""
    return f"<pre style='margin:0; white-space:pre-wrap; overflow-wrap:anywhere'>{html.escape(text)}</pre>"


def _table(frame: pd.DataFrame, longest: int | None = None) -> str:
    """A DataFrame as an HTML table that scrolls sideways inside the panel when it is too wide. Empty
    cells are blank (None too); a value longer than ``longest`` characters (a 260-character "OneSignal
    id") is cut with its length named, so one cell cannot stretch the table."""
    def cell(value):
        if value is None or (not isinstance(value, (list, dict)) and pd.isna(value)):
            return ""
        text = str(value)
        return text if longest is None or len(text) <= longest else f"{text[:longest - 16]}… ({len(text):,} characters)"
    shown = frame.astype(object).map(cell)
    return ("<div style='overflow-x:auto; max-width:100%'>"
            + shown.to_html(index=False, escape=True) + "</div>")


WRAP = "toolkit-wrap"     # a Label with this class wraps long text (ipywidgets cuts Labels at one line)
FIT = "toolkit-fit"       # an HTML widget with this class is no wider than the panel (its tables scroll)
_STYLE = (f"<style>.jupyter-widgets.widget-label.{WRAP} {{white-space: pre-wrap; overflow-wrap: anywhere; "
          "height: auto; min-height: var(--jp-widgets-inline-height); line-height: 1.5; padding: 4px 0;} "
          f".jupyter-widgets.widget-html.{FIT} {{min-width: 0; max-width: 100%;}} "
          f".jupyter-widgets.widget-html.{FIT} > .widget-html-content {{min-width: 0;}} "
          f".{FIT} table {{border-collapse: collapse; line-height: 1.4;}} "
          f".{FIT} th, .{FIT} td {{max-width: 28em; overflow-wrap: break-word; text-align: left; vertical-align: top; "
          "padding: 2px 8px; border-bottom: 1px solid var(--jp-border-color2, #ddd);}</style>")


def _style() -> w.HTML:
    """The panels' CSS, in the panel itself so it travels with the widget (no notebook-wide setup)."""
    return w.HTML(_STYLE, layout={"display": "none"})


def _fitting_html(value: str = "") -> w.HTML:
    html_widget = w.HTML(value)
    html_widget.add_class(FIT)
    return html_widget


def _wrapping_label(text: str = "") -> w.Label:
    label = w.Label(text)
    label.add_class(WRAP)
    return label


def _show(output: w.Output, data: dict) -> None:
    """Replace an Output's content with one display_data bundle. Setting ``outputs`` directly works
    with and without a kernel, so headless tests see what a notebook shows."""
    output.outputs = ({"output_type": "display_data", "data": data, "metadata": {}},)


def _funnel_png(steps: list[tuple[str, int]], title: str) -> bytes | None:
    """The funnel as horizontal bars; None without matplotlib (the text view still shows the numbers)."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global figures, no backend to pick
    except ImportError:
        return None
    labels = [label for label, _ in steps][::-1]
    values = [value for _, value in steps][::-1]
    fig = Figure(figsize=(6, 2.6), dpi=80, layout="constrained")
    ax = fig.subplots()
    bars = ax.barh(labels, values, color=["#2a9d8f"] + ["#8ab6d6"] * (len(values) - 1))
    ax.bar_label(bars, labels=[f"{v:,}" for v in values], padding=3)
    ax.set_xlim(0, max(values + [1]) * 1.15)
    ax.set_title(title[:60], fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


class _Panel:
    widget: w.Widget
    store: Store | str | os.PathLike | None   # a path (opened per action) or an open Store
    busy: w.Label           # where "waiting for the store" shows
    cohort: w.Dropdown      # the cohort the panel shows
    evaluator: Evaluator    # where cohorts are evaluated: the store, or a lake (kept open between actions)
    engine_line: w.Label    # says which engine and lake

    def _use_engine(self, choice: EngineChoice | None) -> None:
        self.evaluator = Evaluator(choice or STORE)
        self.engine_line = _wrapping_label(report.engine_text(**self.evaluator.choice.to_dict()))

    def close(self) -> None:
        """Let go of the lake session (a Spark session or a DuckDB over the lake's files), if one was opened."""
        self.evaluator.close()

    def _open(self, read_only: bool = False):
        """The store for one action, closed after it (unless the panel was given an open Store)."""
        return using(self.store, read_only=read_only, on_wait=self._waiting)

    def _waiting(self, message: str) -> None:
        self.busy.value = message

    def select(self, name: str) -> None:
        """Show the cohort a person named, in any case ("did you mean" when there is no such cohort)."""
        with self._open(read_only=True) as store:
            self.cohort.value = cohorts.resolve_name(store, name)

    mixpanel: _MixpanelCohorts | None = None

    def _cohort_choices(self, store) -> tuple[list[str], list[dict] | None]:
        """The local cohort names and, with a Mixpanel project, its cohorts (`mixpanel.cohorts.choices`)."""
        return _cohort_names(store), self.mixpanel.choices(store) if self.mixpanel else None

    def _picked(self, say) -> bool:
        """A Mixpanel cohort not kept yet was picked: keep it (members from Engage) and select it; ``say``
        shows what happened. False when the pick was an ordinary cohort."""
        value = self.cohort.value
        if self.mixpanel is None or not isinstance(value, str) or not value.startswith(MIXPANEL_PICK):
            return False
        try:
            with self._open() as store:
                name = self.mixpanel.keep(store, value)
                names, listed = self._cohort_choices(store)
        except Exception as exc:
            self.cohort.value = None
            say(f"cannot use Mixpanel cohort {value.removeprefix(MIXPANEL_PICK)}: {exc}")
            return True
        _set_options(self.cohort, _cohort_options(names, listed or []))
        say(f'Mixpanel cohort {value.removeprefix(MIXPANEL_PICK)} is kept as "{name}" (its members are fetched '
            "again on every scheduled sync)")
        self.cohort.value = name
        return True

    def _ipython_display_(self) -> None:
        """The live widget; its plain-text form (what a run without a browser keeps) is the panel's repr."""
        from IPython.display import display

        bundle = self.widget._repr_mimebundle_()
        bundle["text/plain"] = repr(self)
        display(bundle, raw=True)


# -- connect ----------------------------------------------------------------------------------------

class ConnectPanel(_Panel):
    """API address, App ID, API key and Connect; ``credentials`` holds the key in memory once connected."""

    def __init__(self, store, base_url: str | None = None):
        self.store = store
        self.credentials: Credentials | None = None
        self._known: Credentials | None = None      # the last key that worked, for a reconnect with a blank field
        self.result: dict | None = None
        self.address = w.Text(description="API address", value=base_url or default_base_url(),
                              placeholder=DEFAULT_BASE_URL, layout={"width": "480px"})
        self.app_id = w.Text(description="App ID", placeholder="OneSignal App ID", layout={"width": "420px"})
        self.api_key = w.Password(description="API key", placeholder="App API key (never saved)")
        self.connect_button = w.Button(description="Connect", button_style="primary", icon="plug")
        self.status = self.busy = _wrapping_label("Not connected")
        self.connect_button.on_click(self._on_connect)
        self.address.observe(self._on_address, names="value")
        self.widget = w.VBox([_style(), self.address,
                              w.HBox([self.app_id, self.api_key, self.connect_button],
                                     layout={"flex_flow": "row wrap"}),
                              self.status])

    @property
    def base_url(self) -> str:
        """The address in the field (blank: the real OneSignal API)."""
        return self.address.value.strip() or DEFAULT_BASE_URL

    @base_url.setter
    def base_url(self, value: str | None) -> None:
        self.address.value = value or default_base_url()

    @property
    def connected(self) -> bool:
        return self.credentials is not None

    def connect(self, credentials: Credentials) -> bool:
        """Check ``credentials`` against OneSignal at the panel's address (also usable with keys found
        by ``toolkit.credentials.find``); keep them only if they work."""
        self.app_id.value = credentials.app_id
        try:
            with self._open() as store:
                self.result = sync.connect(store, credentials, self.base_url)
        except Exception as exc:        # a click handler's exception would vanish into the kernel log
            self.result = {"connected": False,
                           "detail": str(exc) if isinstance(exc, ToolkitError) else f"{type(exc).__name__}: {exc}"}
        ok = bool(self.result["connected"])
        self.credentials = credentials if ok else None
        if ok:
            self._known = credentials
        detail = str(self.result["detail"]).replace(credentials.api_key, REDACTED)
        self.status.value = "Connected" if ok else f"Not connected: {detail}"
        return ok

    def _on_connect(self, _button=None) -> None:
        app_id, key = self.app_id.value.strip(), self.api_key.value
        self.api_key.value = ""         # first: a Password's value is saved with the notebook's widget state
        if not key and self._known is not None and self._known.app_id == app_id:
            self.connect(self._known)   # e.g. the address changed: check the key in use against it
            return
        try:
            credentials = Credentials(app_id, key)
        except ValueError as exc:
            self.credentials = None
            self.status.value = f"Not connected: {exc}"
            return
        self.connect(credentials)

    def _on_address(self, _change=None) -> None:
        """A new address is not checked yet: exports must not go there on the old check's word."""
        if self.credentials is not None:
            self.credentials = None
            self.status.value = f"Not connected: the API address changed to {self.base_url}; press Connect"

    def __repr__(self) -> str:
        return (f"ConnectPanel(address={self.base_url!r}, app_id={self.app_id.value!r}, "
                f"status={self.status.value!r})")


def connect_panel(store, base_url: str | None = None) -> ConnectPanel:
    """API address (``base_url``, else $ONESIGNAL_BASE_URL, else the real OneSignal API), App ID, API key
    (Password) and Connect, with a "Connected" / "Not connected: why" status."""
    return ConnectPanel(store, base_url)


# -- explore ----------------------------------------------------------------------------------------

class CohortExplorer(_Panel):
    """Pick a cohort: its size, matchability funnel, reasons, and a searchable table of members."""

    def __init__(self, store, now: datetime | str | None = None, rows: int = ROWS, mixpanel=None,
                 engine: EngineChoice | None = None):
        self.store, self.now, self.rows = store, _as_time(now), rows
        self._use_engine(engine)
        self.mixpanel = _MixpanelCohorts(mixpanel) if mixpanel is not None else None
        self.preview: matching.Preview | None = None
        self.shown: pd.DataFrame | None = None
        self.cohort = w.Dropdown(description="Cohort", options=[], layout={"width": "480px"})
        self.size = self.busy = _wrapping_label()
        self.funnel = w.Output()
        self.reasons = _fitting_html()
        self.search = w.Text(description="Search", placeholder="distinct_id or reason")
        self.matches = w.Label()
        self.table = _fitting_html()
        if self.refresh():      # before observing: the first cohort is shown once, below
            self.show()
        self.cohort.observe(lambda _: self.show(), names="value")
        self.search.observe(lambda _: self._filter(), names="value")
        self.widget = w.VBox([_style(), self.cohort, self.engine_line, self.size,
                              w.HBox([self.funnel, self.reasons], layout={"flex_flow": "row wrap"}),
                              w.HBox([self.search, self.matches], layout={"flex_flow": "row wrap"}), self.table],
                             layout={"width": "100%"})

    def refresh(self) -> bool:
        """Re-read the cohort list (after cohorts were saved elsewhere); False if the store could not be read."""
        try:
            with self._open(read_only=True) as store:
                names, listed = self._cohort_choices(store)
        except ToolkitError as exc:
            self.size.value = str(exc)
            return False
        _set_cohorts(self.cohort, names, listed)
        return True

    def show(self) -> None:
        if self._picked(lambda text: setattr(self.size, "value", text)):
            return          # selecting the kept cohort showed it
        name = self.cohort.value
        if name is None:
            self.size.value = "no cohorts in the store: save definitions first (toolkit cohorts load FILE)"
            return
        try:
            with self._open(read_only=True) as store:
                self.preview = self.evaluator.preview(store, name, now=self.now or datetime.now(UTC))
        except Exception as exc:
            self.preview = None
            self.size.value = f"cannot evaluate {name}: {exc}"
            self.funnel.outputs, self.reasons.value, self.matches.value, self.table.value = (), "", "", ""
            return
        s = self.preview.summary
        self.size.value = f"{s['members']:,} members, {s['exportable']:,} exportable ({s['match_rate']:.1%})"
        if self.mixpanel and self.mixpanel.error:
            self.size.value += f"; {self.mixpanel.error}"
        self._draw_funnel(name, s)
        self.reasons.value = self._reasons_html(s["reasons"])
        self._filter()

    def _draw_funnel(self, name: str, summary: dict) -> None:
        steps = funnel(summary)
        data = {"text/plain": " -> ".join(f"{label} {value:,}" for label, value in steps)}
        png = _funnel_png(steps, name)
        if png:
            data["image/png"] = base64.b64encode(png).decode()
        _show(self.funnel, data)

    @staticmethod
    def _reasons_html(reasons: dict) -> str:
        rows = "".join(f"<tr><td>{r}</td><td>{n}</td><td>{html.escape(REASONS.get(r, ''))}</td></tr>"
                       for r, n in reasons.items())
        return f"<table><tr><th>why not exportable</th><th>members</th><th>meaning</th></tr>{rows}</table>"

    def _filter(self) -> None:
        if self.preview is None:
            return
        self.shown = filter_members(self.preview.members, self.search.value)
        total = len(self.preview.members)
        self.matches.value = f"{len(self.shown):,} of {total:,} members" + (
            f" (first {self.rows} shown)" if len(self.shown) > self.rows else "")
        self.table.value = _table(self.shown.head(self.rows), longest=LONGEST)

    def __repr__(self) -> str:
        return (f"CohortExplorer(cohort={self.cohort.value!r}, size={self.size.value!r}, "
                f"engine={self.engine_line.value!r})")


def cohort_explorer(store, now: datetime | str | None = None, mixpanel=None,
                    engine: EngineChoice | None = None) -> CohortExplorer:
    """A cohort Dropdown with size, matchability funnel, per-reason counts and a searchable member table;
    with ``mixpanel`` (a project id), the project's Mixpanel cohorts too; with ``engine``
    (`toolkit.engine.choose`), cohorts are evaluated over its lake instead of the store."""
    return CohortExplorer(store, now, mixpanel=mixpanel, engine=engine)


# -- export -----------------------------------------------------------------------------------------

class ExportPanel(_Panel):
    """Preview and run an export of a cohort (one-time or dynamic); each export's state, last run and match
    rate; the chosen cohort's match rate over time and its last run's members as CSV (written to
    ``csv_dir``, default the working directory: a notebook's folder, so the link opens it); pause,
    resume and stop dynamic syncs."""

    def __init__(self, store, connection: ConnectPanel | None = None, now: datetime | str | None = None,
                 mixpanel=None, csv_dir: str | os.PathLike | None = None, engine: EngineChoice | None = None):
        self.store, self.connection, self.now = store, connection, _as_time(now)
        self._use_engine(engine)
        self.mixpanel = _MixpanelCohorts(mixpanel) if mixpanel is not None else None
        self.csv_dir = Path(csv_dir) if csv_dir is not None else None
        self.last_csv: Path | None = None
        self.overview: dict[str, dict] = {}        # export.overview by cohort, as last read
        self.last_preview: export.ExportPreview | None = None
        self.last_record: export.RunRecord | None = None
        self.cohort = w.Dropdown(description="Cohort", options=[], layout={"width": "480px"})
        self.mode = w.ToggleButtons(options=MODES, value="once", description="Sync type")
        self.force = w.Checkbox(description="Force (allow mass removals)", value=False)
        self.preview_button = w.Button(description="Preview", icon="eye")
        self.export_button = w.Button(description="Export", button_style="primary", icon="upload")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="Progress")
        self.status = self.busy = _wrapping_label()
        self.diff = _fitting_html()
        self.result = _fitting_html()
        self.syncs = _fitting_html()
        self.chart = _fitting_html()            # the chosen cohort's match rate, run by run (SVG)
        self.members_button = w.Button(description="Members CSV", icon="download",
                                       tooltip="every member's fate in the cohort's last run, as CSV")
        self.download = _fitting_html()
        self.sync_choice = w.Dropdown(description="Dynamic", options=[], value=None, layout={"width": "480px"})
        self.stop_button = w.Button(description="Stop sync", button_style="warning", icon="stop")
        self.pause_button = w.Button(description="Pause", icon="pause")
        self.resume_button = w.Button(description="Resume", button_style="success", icon="play")
        # Stopping asks first, naming the cohort: a sync stopped by mistake silently goes stale.
        self.stopping: str | None = None
        self.confirm_text = _wrapping_label()
        self.confirm_button = w.Button(description="Yes, stop it", button_style="danger", icon="stop")
        self.cancel_button = w.Button(description="Cancel")
        self.confirm = w.VBox([self.confirm_text, w.HBox([self.confirm_button, self.cancel_button])],
                              layout={"display": "none"})
        self.preview_button.on_click(self._on_preview)
        self.export_button.on_click(self._on_export)
        self.stop_button.on_click(self._on_stop)
        self.pause_button.on_click(lambda _: self._pause_or_resume(export.pause, report.paused_text))
        self.resume_button.on_click(lambda _: self._pause_or_resume(export.resume, report.resumed_text))
        self.members_button.on_click(self._on_members)
        self.confirm_button.on_click(self._on_confirm_stop)
        self.cancel_button.on_click(lambda _: self._ask_stop(None))
        self.sync_choice.observe(lambda _: self._ask_stop(None), names="value")
        self.cohort.observe(lambda _: self._picked(lambda text: setattr(self.status, "value", text)), names="value")
        self.widget = w.VBox([
            _style(), self.cohort, self.engine_line, self.mode, self.force,
            w.HBox([self.preview_button, self.export_button, self.progress], layout={"flex_flow": "row wrap"}),
            self.status, self.diff, self.result,
            w.HTML("<b>Exports</b>"), self.syncs,
            w.HBox([self.chart, w.VBox([self.members_button, self.download])], layout={"flex_flow": "row wrap"}),
            w.HBox([self.sync_choice, self.pause_button, self.resume_button, self.stop_button],
                   layout={"flex_flow": "row wrap"}), self.confirm],
            layout={"width": "100%"})
        self.refresh()
        self.cohort.observe(lambda _: self._draw_chart(), names="value")

    def refresh(self) -> None:
        """Re-read cohorts and exports from the store."""
        try:
            with self._open(read_only=True) as store:
                (names, listed), found = self._cohort_choices(store), export.overview(store)
        except ToolkitError as exc:
            self.status.value = str(exc)
            return
        self.overview = {s["cohort"]: s for s in found}
        _set_cohorts(self.cohort, names, listed)
        if self.mixpanel and self.mixpanel.error:
            self.status.value = self.mixpanel.error
        _set_options(self.sync_choice, [s["cohort"] for s in found if s["state"] in ("active", "paused", "guarded")])
        self.syncs.value = _table(sync_table(found)) if found else "no exports yet"
        self._draw_chart()

    def _draw_chart(self) -> None:
        """The chosen cohort's match rate at each of its recent runs, as a small SVG line: drawn in
        microseconds (a matplotlib figure took seconds in a busy kernel, long enough for a quick click on
        the panel to overtake a control's change), and it shows wherever HTML does."""
        found = self.overview.get(self.cohort.value)
        series = found["series"] if found else []
        self.chart.value = match_rate_svg(series, self.cohort.value or "") if series else ""

    def members_csv(self) -> Path | None:
        """Write every member's fate in the chosen cohort's last run as CSV (``export.member_fates``), show a
        link to it; returns its path (None when the cohort has no run, or the write failed)."""
        name = self.cohort.value
        try:
            with self._open(read_only=True) as store:
                run_id = export.latest_run(store.reader(), name) if name else None
                if run_id is None:
                    self.status.value = f"no export runs of {name} yet" if name else "no cohorts in the store"
                    return None
                fates = export.member_fates(store.reader(), run_id)
            path = (self.csv_dir or Path.cwd()) / csv_name(name, run_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8", newline="") as out:
                fates.write_csv(out)
        except Exception as exc:
            self.status.value = f"Members CSV failed: {exc}"
            return None
        self.last_csv = path
        self.status.value = report.member_fates_text(fates, str(path))
        self.download.value = _download_link(path)
        return path

    def _on_members(self, _button=None) -> None:
        self.members_csv()

    def _pause_or_resume(self, action, text) -> None:
        """Pause or resume the chosen dynamic sync (``export.pause`` / ``export.resume``)."""
        name = self.sync_choice.value
        if name is None:
            self.status.value = "choose the dynamic sync first" if self.sync_choice.options else "no dynamic sync"
            return
        try:
            with self._open() as store:
                done = action(store, name, now=self._time())
        except Exception as exc:
            self.status.value = f"{action.__name__.capitalize()} failed: {exc}"
            return
        self.status.value = text(done if isinstance(done, dict) else name)
        self.refresh()

    def _time(self) -> datetime:
        return self.now or datetime.now(UTC)

    def _credentials(self) -> Credentials | None:
        """The connected panel's key, else the environment or the 0600 file (as the CLI does)."""
        if self.connection is not None and self.connection.credentials is not None:
            return self.connection.credentials
        app_id = self.connection.app_id.value if self.connection is not None else None
        return credentials.find(app_id or None)

    def preview(self) -> export.ExportPreview | None:
        """What exporting the chosen cohort now would do (``export.preview_export``, read-only: nothing is
        sent or recorded), shown in the panel; None when there is nothing to preview or it failed."""
        if self.cohort.value is None:
            self.status.value = "no cohorts in the store: save definitions first"
            return None
        try:
            with self._open(read_only=True) as store:
                shown = export.preview_export(store, self.cohort.value, now=self._time(), force=self.force.value,
                                              evaluate=self.evaluator.preview)
        except Exception as exc:
            self.status.value = f"Preview failed: {exc}"
            return None
        self.last_preview = shown
        self.status.value = report.preview_verdict_text(shown)
        self.diff.value = _pre(report.export_preview_text(shown))
        return shown

    def _on_preview(self, _button=None) -> None:
        self.preview()

    def _on_export(self, _button=None) -> None:
        name = self.cohort.value
        try:
            credentials = self._credentials()
        except Exception as exc:       # e.g. a credentials file readable by others
            self.status.value = f"Not connected: {exc}"
            return
        if name is None or credentials is None:
            self.status.value = ("no cohorts in the store" if name is None else
                                 "Not connected: connect above (or set $ONESIGNAL_APP_ID and $ONESIGNAL_API_KEY)")
            return
        self.progress.value, self.progress.max, self.progress.bar_style = 0, 1, ""
        self.export_button.disabled = True       # two runs of one cohort never overlap anyway
        self.status.value = f"Exporting {name}..."
        self.diff.value = ""                     # the preview described the state before this run
        try:
            with self._open() as store:     # the write connection lasts for the run only
                chosen = export.settings(store, name, mode=self.mode.value, app_id=credentials.app_id,
                                         base_url=self.connection.base_url if self.connection is not None else None,
                                         force=self.force.value, now=self._time())
                record = sync.export_cohort(store, chosen, credentials, on_progress=self._on_progress,
                                            evaluator=self.evaluator)
        except Exception as exc:
            self.status.value = f"Export failed: {exc}"
            return
        finally:
            self.export_button.disabled = False
        self.last_record = record
        if record.status in ("ok", "partial") and not (record.plan and record.plan.changes):
            self.progress.value = self.progress.max    # nothing to send is done too
        self.progress.bar_style = {"ok": "success", "partial": "warning"}.get(record.status, "danger")
        self.status.value = f"Export {record.status}" + (f": {record.error}" if record.error else "")
        self.result.value = _pre(report.run_text(record))
        self.refresh()

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.max = max(total, 1)
        self.progress.value = min(done, self.progress.max)

    def _on_stop(self, _button=None) -> None:
        """Ask before stopping the chosen sync; nothing is stopped until the confirmation."""
        name = self.sync_choice.value
        if name is None:
            self.status.value = ("choose the dynamic sync to stop first" if self.sync_choice.options
                                 else "no dynamic sync to stop")
            return
        self._ask_stop(name)

    def _ask_stop(self, name: str | None) -> None:
        self.stopping = name
        self.confirm_text.value = (f"Stop the dynamic sync of {name}? It will no longer update every 15 minutes; "
                                   "OneSignal keeps the last export." if name else "")
        self.confirm.layout.display = None if name else "none"

    def _on_confirm_stop(self, _button=None) -> None:
        name = self.stopping
        self._ask_stop(None)
        if name is None:
            return
        try:
            with self._open() as store:
                export.stop(store, name, self._time())
        except Exception as exc:
            self.status.value = f"Stop failed: {exc}"
            return
        self.status.value = f"Stopped the dynamic sync of {name}; OneSignal keeps the last export"
        self.refresh()

    def __repr__(self) -> str:
        return (f"ExportPanel(cohort={self.cohort.value!r}, mode={self.mode.value!r}, status={self.status.value!r}, "
                f"engine={self.engine_line.value!r})")


def export_panel(store, connection: ConnectPanel | None = None, now: datetime | str | None = None,
                 mixpanel=None, csv_dir: str | os.PathLike | None = None,
                 engine: EngineChoice | None = None) -> ExportPanel:
    """Cohort, sync type, Preview (diff and removal guard), Export with progress, Force; each export's
    state and match rate, the cohort's members CSV; Pause, Resume and Stop for dynamic syncs. Uses
    ``connection``'s key, else $ONESIGNAL_API_KEY / the credentials file; with ``mixpanel`` (a project id),
    the project's Mixpanel cohorts can be picked too; with ``engine`` (`toolkit.engine.choose`), Preview and
    Export evaluate the cohort over its lake (the members come home to the store on Export)."""
    return ExportPanel(store, connection, now, mixpanel=mixpanel, csv_dir=csv_dir, engine=engine)


def sync_table(overview: list[dict]) -> pd.DataFrame:
    """``export.overview`` as the panel's table: a row per export."""
    return pd.DataFrame([{
        "cohort": s["cohort"], "state": s["state"] + (f" ({s['paused_reason']})" if s["state"] == "paused" else ""),
        "last run": f"#{s['last_run_id']} {s['last_status']} {s['last_run_at']:%Y-%m-%d %H:%M}" if s["last_run_id"]
        else None,
        "last success": s["last_success_at"], "members": s["members"], "exportable": s["exportable"],
        "in segment": s["in_segment"],
        "match rate": None if s["match_rate"] is None else f"{s['match_rate']:.1%}",
        "last reconcile": report.last_reconcile_text(s.get("last_reconcile"))} for s in overview])


INLINE_BYTES = 2_000_000     # a CSV up to this size is in the link itself; a larger one is linked by its path


def _download_link(path: Path) -> str:
    """A link that downloads ``path``: its bytes inside the link (a data URL works wherever the panel shows)
    when small, else its path from the working directory (the notebook's folder, which Jupyter serves)."""
    if path.stat().st_size <= INLINE_BYTES:
        href = "data:text/csv;charset=utf-8;base64," + base64.b64encode(path.read_bytes()).decode()
    else:
        href = os.path.relpath(path, Path.cwd()) if path.is_relative_to(Path.cwd()) else path.as_uri()
    return (f"<a href='{html.escape(href, quote=True)}' download='{html.escape(path.name, quote=True)}' "
            f"target='_blank'>{html.escape(path.name)}</a> ({path})")


def csv_name(cohort: str, run_id: int) -> str:
    """A file name for a run's members: the cohort's letters and digits, the run's id."""
    slug = "".join(c if c.isalnum() else "-" for c in cohort).strip("-")[:60] or "cohort"
    return f"{slug}-run-{run_id}-members.csv"


CHART_WIDTH, CHART_HEIGHT, CHART_PAD = 480, 150, 30


def chart_points(series: list[dict]) -> list[tuple[float, float]]:
    """(x, y) in the chart's pixels for each run with members: runs evenly spaced left to right, the rate
    from 0 % (bottom) to 100 % (top)."""
    rates = [p["match_rate"] for p in series]
    step = (CHART_WIDTH - 2 * CHART_PAD) / max(len(rates) - 1, 1)
    top, bottom = 10, CHART_HEIGHT - CHART_PAD
    return [(round(CHART_PAD + i * step, 1), round(bottom - r * (bottom - top), 1))
            for i, r in enumerate(rates) if r is not None]


def match_rate_svg(series: list[dict], title: str) -> str:
    """The match rate (exportable / members) run by run as an SVG line chart with its axis, the first and
    last runs' times, and the latest rate; the text sparkline beneath for readers without images."""
    points = chart_points(series)
    rates = [p["match_rate"] for p in series]
    bottom, left, right = CHART_HEIGHT - CHART_PAD, CHART_PAD, CHART_WIDTH - CHART_PAD
    grid = "".join(f"<line x1='{left}' x2='{right}' y1='{y}' y2='{y}' stroke='#ddd'/>"
                   f"<text x='{left - 4}' y='{y + 4}' font-size='10' text-anchor='end'>{label}</text>"
                   for y, label in ((bottom, "0%"), ((bottom + 10) / 2, "50%"), (10, "100%")))
    line = " ".join(f"{x},{y}" for x, y in points)
    dots = "".join(f"<circle cx='{x}' cy='{y}' r='2.5' fill='#2a9d8f'/>" for x, y in points)
    first, final = series[0]["started_at"], series[-1]["started_at"]
    below = CHART_HEIGHT - 10
    times = (f"<text x='{left}' y='{below}' font-size='10'>{first:%Y-%m-%d %H:%M}</text>"
             f"<text x='{right}' y='{below}' font-size='10' text-anchor='end'>{final:%Y-%m-%d %H:%M}</text>")
    caption = html.escape(report.match_rate_text(title, rates))
    return (f"<svg class='match-rate' width='{CHART_WIDTH}' height='{CHART_HEIGHT}' "
            f"viewBox='0 0 {CHART_WIDTH} {CHART_HEIGHT}' role='img' aria-label='{html.escape(caption, quote=True)}'>"
            f"{grid}<polyline points='{line}' fill='none' stroke='#2a9d8f' stroke-width='2'/>{dots}{times}</svg>"
            f"<div style='font-size:smaller'>{caption}</div>")
