"""The Mixpanel client against the Mixpanel emulator over HTTP on 127.0.0.1: export, Engage paging, cohorts,
typed errors (wrong secret, project, region), retries through 5xx, 429s and cut connections inside the
budget, and the secret kept out of errors and logs; the budget's arithmetic on a fake clock."""

import base64
import gzip
import io
import json
import logging
import re
from datetime import date

import pytest
from mixpanel_fixtures import FIRST_DAY, events, write_folder

from toolkit.errors import (
    MixpanelAuthError,
    MixpanelBadRequest,
    MixpanelNetworkError,
    MixpanelProjectError,
    MixpanelRegionError,
    MixpanelServerError,
)
from toolkit.mixpanel.budget import EXPORT, Budget, Limits
from toolkit.mixpanel.client import MixpanelClient, ServiceAccount
from toolkit.mixpanel.emulator import MixpanelEmulator

SECRET = "s3cr3t-Service-Account-Secret-value"
FAST = dict(backoff_base=0.01, backoff_max=0.05, rate_limited_wait=0.05)


@pytest.fixture
def emu(tmp_path):
    with MixpanelEmulator(write_folder(tmp_path / "mp"), project_id="4242", secret=SECRET, page_size=7) as e:
        yield e


def client_for(emu, **options) -> MixpanelClient:
    account = ServiceAccount(options.pop("username", emu.username), options.pop("secret", emu.secret),
                             options.pop("project_id", emu.project_id), options.pop("region", "us"))
    return MixpanelClient(account, options.pop("base_url", emu.url), **{**FAST, **options})


def export_lines(client, first=FIRST_DAY, last=date(2026, 10, 4)) -> list[dict]:
    sink = io.BytesIO()
    result = client.export_to(sink, first, last)
    raw = sink.getvalue()
    assert result.gzip and result.bytes == len(raw)
    lines = gzip.decompress(raw).decode().splitlines()
    return [json.loads(line) for line in lines]


def test_export_streams_gzip_and_the_range_is_inclusive(emu):
    with client_for(emu) as client:
        assert sorted(e["properties"]["$insert_id"] for e in export_lines(client)) == \
            sorted(e["properties"]["$insert_id"] for e in events())
        two_days = export_lines(client, date(2026, 10, 2), date(2026, 10, 3))
    assert {e["properties"]["$insert_id"].split("-")[0] for e in two_days} == {"e1", "e2"}
    assert len(two_days) == 100


def test_engage_pages_with_the_session_until_a_short_page(emu):
    with client_for(emu) as client:
        pages = list(client.engage())
    assert [len(p) for p in pages] == [7, 7, 6]
    assert sorted(r["$distinct_id"] for p in pages for r in p) == sorted(f"u{i}" for i in range(20))
    assert [entry["path"] for entry in emu.log].count("/api/query/engage") == 3


def test_cohorts_and_their_members_through_filter_by_cohort(emu):
    with client_for(emu) as client:
        cohorts = client.cohorts()
        members = [r["$distinct_id"] for page in client.engage(cohort_id=12) for r in page]
        profiled = [r["$distinct_id"] for page in client.engage(cohort_id=12, include_all_users=False) for r in page]
    assert [(c["id"], c["name"], c["count"], c["project_id"]) for c in cohorts] == [
        (11, "Power users", 3, 4242), (12, "Lapsed", 2, 4242)]
    assert members == ["u4", "ghost-without-profile"] and profiled == ["u4"]


def _secret_forms():
    return [SECRET, base64.b64encode(f"sa.emulator:{SECRET}".encode()).decode(), "wrong-secret-value-123"]


def test_a_wrong_secret_is_a_clear_error_without_the_secret(emu, caplog):
    caplog.set_level(logging.DEBUG)
    with client_for(emu, secret="wrong-secret-value-123") as client, pytest.raises(MixpanelAuthError) as caught:
        client.cohorts()
    text = str(caught.value)
    assert "401" in text and "Unable to authenticate request" in text and "MIXPANEL_SECRET" in text
    assert caught.value.attempts == 1                       # never retried
    for form in _secret_forms():
        assert form not in text and form not in repr(client) and form not in caplog.text


def test_a_wrong_project_is_a_clear_error(emu):
    with client_for(emu, project_id="999") as client, pytest.raises(MixpanelProjectError) as caught:
        client.export_to(io.BytesIO(), FIRST_DAY, FIRST_DAY)
    assert "project 999" in str(caught.value) and "MIXPANEL_PROJECT_ID" in str(caught.value)


def test_a_wrong_region_is_a_clear_error(tmp_path, emu):
    # The project lives in the EU emulator; the US one knows it is elsewhere, as Mixpanel's US hosts do.
    with MixpanelEmulator(tmp_path, project_id="1", secret=SECRET, region="us",
                          elsewhere={"4242": "eu"}) as us_hosts:
        with client_for(emu, base_url=us_hosts.url) as client, pytest.raises(MixpanelRegionError) as caught:
            client.engage_page()
    assert "MIXPANEL_REGION" in str(caught.value) and "EU" in str(caught.value)


def test_5xx_and_429_storms_are_retried_inside_the_budget(emu):
    emu.inject("error", times=2)
    emu.inject("throttle", times=3)
    emu.inject("crash", api="export")
    with client_for(emu) as client:
        assert len(client.cohorts()) == 2
        rows = client.retrying(lambda: export_lines(client, FIRST_DAY, FIRST_DAY))
    assert len(rows) == 50
    assert emu.counters["injected_503"] == 2 and emu.counters["injected_429"] == 3
    assert emu.counters["injected_500"] == 1
    assert emu.counters["rate_limited"] == 0       # the client's budget kept under the real 3/second


def test_errors_that_outlast_the_attempts_say_so(emu):
    emu.inject("error", times=10)
    with client_for(emu, max_attempts=3) as client, pytest.raises(MixpanelServerError) as caught:
        client.cohorts()
    assert caught.value.attempts == 3 and "503" in str(caught.value)


def test_a_cut_export_is_a_retryable_network_error(emu):
    emu.inject("cut", api="export", at_byte=300)
    with client_for(emu) as client:
        with pytest.raises(MixpanelNetworkError) as caught:
            client.export_to(io.BytesIO(), FIRST_DAY, FIRST_DAY)
        assert caught.value.retryable
        assert len(client.retrying(lambda: export_lines(client, FIRST_DAY, FIRST_DAY))) == 50


def test_nothing_listening_is_final_at_once(emu):
    url = emu.url
    emu.stop()
    with client_for(emu, base_url=url) as client, pytest.raises(MixpanelNetworkError) as caught:
        client.cohorts()
    assert caught.value.attempts == 1 and "cannot connect" in str(caught.value)


class FakeTime:
    def __init__(self):
        self.now, self.slept = 1_000_000.0, []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_the_budget_keeps_the_hour_and_says_how_long_it_waits():
    fake, heard = FakeTime(), []
    budget = Budget("Export", Limits(per_hour=60, per_second=3, concurrent=100), clock=fake.clock, sleep=fake.sleep,
                    on_wait=lambda seconds, text: heard.append(text))
    for _ in range(60):
        with budget.slot():
            pass
    assert fake.now - 1_000_000 < 25               # 3 a second (with its margin): about 22 s for 60
    start_of_hour = budget.history()[0]
    with budget.slot():
        pass
    assert fake.now == pytest.approx(start_of_hour + 3600)
    assert "60 queries/hour used" in heard[-1] and "waiting 59m" in heard[-1]


def test_the_budget_resumes_from_saved_history_and_honours_a_pause():
    fake = FakeTime()
    history = [fake.now - 3500 + i for i in range(60)]         # a previous process used the hour
    budget = Budget("Export", EXPORT, history=history, clock=fake.clock, sleep=fake.sleep)
    with budget.slot():
        pass
    assert fake.slept and sum(fake.slept) == pytest.approx(100)
    budget.pause(30)
    before = fake.now
    with budget.slot():
        pass
    assert fake.now - before >= 30


def test_a_service_account_never_shows_its_secret():
    account = ServiceAccount("sa.user", SECRET, "4242", "EU")
    assert SECRET not in repr(account) and SECRET not in str(account) and account.region == "eu"
    with pytest.raises(ValueError, match="not a number"):
        ServiceAccount("sa.user", SECRET, "my-project")
    with pytest.raises(ValueError, match="region"):
        ServiceAccount("sa.user", SECRET, "1", "mars")
    with pytest.raises(ValueError, match="character 3") as caught:
        ServiceAccount("sa.user", "ab\ncdef-secret", "1")
    assert "cdef" not in str(caught.value)


def test_the_budget_holds_no_more_requests_at_once_than_allowed():
    budget = Budget("Query", Limits(per_hour=60, per_second=60, concurrent=2))
    with budget.slot(), budget.slot():
        assert not budget._slots.acquire(blocking=False)        # a third waits
    assert budget._slots.acquire(blocking=False)
    budget._slots.release()


def test_region_hosts_unless_a_base_url_is_given(monkeypatch):
    monkeypatch.delenv("MIXPANEL_BASE_URL", raising=False)
    for region, query, data in (("us", "https://mixpanel.com", "https://data.mixpanel.com"),
                                ("eu", "https://eu.mixpanel.com", "https://data-eu.mixpanel.com"),
                                ("in", "https://in.mixpanel.com", "https://data-in.mixpanel.com")):
        with MixpanelClient(ServiceAccount("sa", SECRET, "1", region)) as client:
            assert (client.query_url, client.export_url) == (query, data)
    monkeypatch.setenv("MIXPANEL_BASE_URL", "http://127.0.0.1:9/")
    with MixpanelClient(ServiceAccount("sa", SECRET, "1", "eu")) as client:
        assert (client.query_url, client.export_url) == ("http://127.0.0.1:9", "http://127.0.0.1:9")


def test_the_emulators_export_filters_by_event_where_and_limit(emu):
    with client_for(emu) as client:
        def ids(**query):
            sink = io.BytesIO()
            client.export_to(sink, FIRST_DAY, FIRST_DAY, **query)
            return [json.loads(line) for line in gzip.decompress(sink.getvalue()).splitlines()]

        purchases = ids(event=["Purchase"])
        pro = ids(where='properties["plan"] == "pro"')
        with pytest.raises(MixpanelBadRequest, match="where"):
            ids(where="properties.plan in ['pro']")
    assert len(purchases) == 17 and {e["event"] for e in purchases} == {"Purchase"}
    assert len(pro) == 25 and {e["properties"]["plan"] for e in pro} == {"pro"}


@pytest.mark.slow
def test_a_429_for_the_per_second_limit_waits_a_second_not_the_hourly_minute(emu, caplog):
    """Another client's requests this second (a panel beside the scheduled sync): this one's budget cannot
    know them, Mixpanel answers 429 naming the per-second limit, and a second's wait clears it."""
    import time

    emu.windows["query"].starts.extend([time.monotonic() + 2] * 3)    # three starts "now" for 3 s
    with caplog.at_level(logging.WARNING), MixpanelClient(ServiceAccount(emu.username, emu.secret, "4242"), emu.url,
                                                          backoff_base=0.01, backoff_max=0.05,
                                                          rate_limited_wait=60.0) as client:
        assert [c["id"] for c in client.cohorts()] == [11, 12]
    delays = [float(d) for d in re.findall(r"retrying in ([\d.]+)s", caplog.text)]
    assert delays and all(d == 1.0 for d in delays), caplog.text
