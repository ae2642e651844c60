"""Every error the toolkit raises on purpose, one hierarchy under ``ToolkitError``.

Each class says what a person did and what to do; each message names the file, line, field, cohort or
user concerned. Modules raise these (``export.ExportError`` and the like still resolve: they import them
from here). The command maps them to its exit codes in one place (``cli.main``): a busy sync 4, a usage
error 2, any other 1. Ground level: imports nothing but the standard library and ``toolkit.redaction``.
"""

from __future__ import annotations

from collections.abc import Iterable

from toolkit.redaction import REDACTOR


class ToolkitError(Exception):
    """Base class: everything the toolkit raises on purpose. Its message is meant for a person."""


class UsageError(ToolkitError, ValueError):
    """An option or argument has a value the toolkit cannot use (``--month 2026-13``, ``--every 5x``, an
    unknown rule set, a fault rate over 1): correct it as the message says. Exit status 2."""


class SetupError(ToolkitError):
    """Something a command needs is not there: an optional extra (JupyterLab, papermill), the demo's
    files, a notebooks folder. Install or create it as the message says, then run the command again."""


# -- the store and loading -------------------------------------------------------------------------

class StoreError(ToolkitError):
    """The DuckDB store cannot be opened (another process holds it, an unknown schema version, a bad
    $TOOLKIT_STORE_WAIT): wait for that process, or fix what the message names."""


class LoadError(ToolkitError):
    """A file cannot be loaded (unreadable, unknown format, or refused under --strict): fix or replace
    the file named, then load it again; ``path`` is that file."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"{path}: {message}")


class LakeError(ToolkitError):
    """A lake folder cannot be read or written (missing, no events, a file that is not Parquet or JSON, a
    non-empty target): the message names the folder or file; fix it, or point at another folder."""


class EngineError(ToolkitError):
    """The chosen engine cannot run (Spark not installed, a master that does not answer, a query the
    engine refused): the message says which engine and what to do."""


# -- cohorts and matching --------------------------------------------------------------------------

class CohortError(ToolkitError):
    """A cohort cannot be defined, found, stored or evaluated; the message says which and why (and the
    close names, for a name not found)."""


class DefinitionError(CohortError):
    """An invalid definition; ``field`` is the path inside the cohort, e.g. ``rules[1].count``: correct
    that field of the file and load it again."""

    def __init__(self, where: str, field: str, message: str):
        self.where, self.field = where, field
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


class CohortCycleError(CohortError):
    """Cohorts that include or exclude each other in a loop; ``cycle`` is the loop, first name repeated.
    Break the loop in one of the definitions named."""

    def __init__(self, cycle: list[str], where: str = ""):
        self.cycle = cycle
        loop = " -> ".join(f'"{name}"' for name in cycle)
        super().__init__(f"{where + ': ' if where else ''}cohort cycle: {loop}; a cohort cannot include "
                         "or exclude itself, directly or through other cohorts")


class MatchingError(ToolkitError):
    """Bad matching options (unknown id type, empty property name, negative limit): pass one of the
    values the message lists."""


# -- keys, exports and syncs -----------------------------------------------------------------------

class CredentialsError(ToolkitError):
    """No usable key (none in the environment, the file or a prompt), or an unsafe credentials file:
    set $ONESIGNAL_API_KEY, or fix the file as the message says."""


class InvalidCredentials(CredentialsError, ValueError):
    """An App ID or API key that cannot be right (empty, a line break or a non-ASCII character inside):
    copy it again from OneSignal. The message never repeats the key, not even part of it."""


class ExportError(ToolkitError):
    """An export could not run: free plan, guard tripped, overlapping run, too many dynamic syncs, no
    registration. The message says which, and what to do (upgrade, --force, wait, --once...)."""


class SyncPaused(ExportError):
    """A run of a paused dynamic sync was refused: a person resumes it (a cycle skips it: another run of the
    cycle may have paused it, for a key refused for the whole app)."""


class SyncBusy(ToolkitError):
    """Another sync holds the runs folder's lock, so this one did nothing: the next one catches up.
    Exit status 4."""


class SyncFailed(ToolkitError):
    """Some or all of a scheduled sync failed (raised by the sync notebook after it wrote its record):
    the run record says which cohorts, the load or the MTU count, and why."""


class AlertError(ToolkitError):
    """Alerts cannot be configured or sent as asked (a bad --smtp address, no channel, a secrets file
    others can read, a test message refused): the message names the setting or channel and what to do."""


# -- OneSignal's answers ---------------------------------------------------------------------------

class OneSignalError(ToolkitError):
    """OneSignal refused or could not answer a request. ``messages`` are OneSignal's own words, ``status``
    its HTTP status; the class's ``hint`` says what to check. Any written form of a registered key is
    redacted from the message."""

    retryable = False
    hint = ""

    def __init__(self, message: str, *, status: int | None = None, messages: Iterable[str] = (),
                 method: str | None = None, path: str | None = None, retryable: bool | None = None):
        self.status = status
        self.messages = list(messages)
        self.method, self.path = method, path
        self.attempts = 1
        if retryable is not None:
            self.retryable = retryable
        message = message.rstrip()
        if self.hint:
            message = f"{message}{'' if message.endswith('.') else '.'} {self.hint}."
        super().__init__(REDACTOR.redact(message))


class AuthError(OneSignalError):
    """401/403: the key is wrong or belongs to another app."""

    hint = "Check the App API key (OneSignal > Settings > Keys & IDs) and that it belongs to this app"


class BadRequest(OneSignalError):
    """400: OneSignal refused the request; its messages say why."""


class AppNotFound(BadRequest):
    """400 "app_id not found": the App ID is wrong."""

    hint = "Check the App ID (OneSignal > Settings > Keys & IDs)"


class NotFound(OneSignalError):
    """404: no such user or segment in OneSignal."""


class PlanRefused(BadRequest):
    """The app's OneSignal plan does not allow this (segments through the API on a free plan)."""


class Conflict(OneSignalError):
    """409: the change conflicts with OneSignal's state (e.g. an alias already taken)."""


class RetryAfter:
    """Mixin of a 429: retried after ``retry_after`` seconds (the server's Retry-After; None: a backoff)."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs):
        self.retry_after = retry_after
        super().__init__(message, **kwargs)    # type: ignore[call-arg]


class RateLimited(RetryAfter, OneSignalError):
    """429: too many requests; retried after ``retry_after`` seconds (OneSignal's Retry-After)."""


class ServerError(OneSignalError):
    """5xx: OneSignal failed; retried, and the next run converges."""

    retryable = True


class NetworkError(OneSignalError):
    """No answer: a refused connection, an unknown host, a timeout or a dropped connection."""

    retryable = True
    hint = "Check the network connection and the base URL"


# -- the emulator ----------------------------------------------------------------------------------

class EmulatorError(ToolkitError):
    """The emulator cannot start or be seeded as asked (bad state file, seed file or option): fix the
    file or option named."""


# -- OneSignal's plan limits (issue 15) ------------------------------------------------------------

class TagLimitExceeded(BadRequest):
    """400 "App is limited to a maximum of N tags on a given player": the user would carry more data tags
    than the app's OneSignal plan allows (Free 2, paid 20). ``limit`` is N. Not retried: the user needs
    fewer tags, or the app a plan with more."""

    def __init__(self, message: str, *, limit: int, **kwargs):
        self.limit = limit
        super().__init__(message, **kwargs)


class SegmentLimitReached(BadRequest):
    """400: the app already holds as many segments as its OneSignal plan allows (Free 6). ``limit`` is
    that number when OneSignal said it."""

    hint = "Delete a segment the app no longer uses in OneSignal, or move the app to a plan with more segments"

    def __init__(self, message: str, *, limit: int | None = None, **kwargs):
        self.limit = limit
        super().__init__(message, **kwargs)


# -- Mixpanel's answers ----------------------------------------------------------------------------

class MixpanelError(ToolkitError):
    """Mixpanel refused or could not answer a request. ``messages`` are Mixpanel's own words, ``status``
    its HTTP status, ``api`` which API (export, engage, cohorts); the class's ``hint`` says what to check.
    The service account's secret is redacted from the message."""

    retryable = False
    hint = ""

    def __init__(self, message: str, *, status: int | None = None, messages: Iterable[str] = (),
                 api: str | None = None, retryable: bool | None = None):
        self.status, self.api = status, api
        self.messages = list(messages)
        self.attempts = 1
        if retryable is not None:
            self.retryable = retryable
        message = message.rstrip()
        if self.hint:
            message = f"{message}{'' if message.endswith('.') else '.'} {self.hint}."
        super().__init__(REDACTOR.redact(message))


class MixpanelAuthError(MixpanelError):
    """401: Mixpanel does not know this service account's username and secret (a typo, a deleted or
    expired service account)."""

    hint = ("Check MIXPANEL_USERNAME and MIXPANEL_SECRET (Mixpanel > Organization settings > Service "
            "accounts); a service account can expire")


class MixpanelProjectError(MixpanelError):
    """403 (or 400 naming the project): the service account has no access to this project, or there is no
    such project: check MIXPANEL_PROJECT_ID and the account's projects."""

    hint = "Check MIXPANEL_PROJECT_ID and that the service account is a member of that project"


class MixpanelRegionError(MixpanelError):
    """The project lives in another data residency region (US, EU, India) than the hosts asked: set
    MIXPANEL_REGION to the project's region."""

    hint = "Set MIXPANEL_REGION to the project's data residency region (us, eu or in)"


class MixpanelBadRequest(MixpanelError):
    """400: Mixpanel refused the request's parameters (a date range, a where expression); its message
    says which."""


class MixpanelRateLimited(RetryAfter, MixpanelError):
    """429: over one of Mixpanel's rate limits; retried after ``retry_after`` seconds (or a backoff)."""


class MixpanelServerError(MixpanelError):
    """5xx: Mixpanel failed; retried with backoff, and a pull resumes where it stopped."""

    retryable = True


class MixpanelNetworkError(MixpanelError):
    """No (complete) answer: a refused connection, an unknown host, a timeout, a connection cut in the
    middle of an export; retried, except a host that never answered."""

    retryable = True
    hint = "Check the network connection, MIXPANEL_REGION and $MIXPANEL_BASE_URL"


class PullError(ToolkitError):
    """A pull cannot run as asked (no start date on a first pull, a range ending before it starts, an
    unreadable pull state file): fix the option or file named."""
