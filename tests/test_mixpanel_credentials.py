"""Mixpanel's service account from the environment or a 0600 file (never an argument), saved atomically."""

import json
import os
import stat

import pytest

from toolkit import credentials
from toolkit.errors import CredentialsError

ENV = ("MIXPANEL_USERNAME", "MIXPANEL_SECRET", "MIXPANEL_PROJECT_ID", "MIXPANEL_REGION")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TOOLKIT_MIXPANEL_CREDENTIALS", str(tmp_path / "cfg" / "mixpanel.json"))


def test_from_the_environment(monkeypatch):
    for name, value in zip(ENV, ("sa.one", "secret-from-env-1", "77", "in"), strict=True):
        monkeypatch.setenv(name, value)
    account = credentials.require_mixpanel()
    assert (account.username, account.secret, account.project_id, account.region) == \
        ("sa.one", "secret-from-env-1", "77", "in")


def test_saved_to_a_private_file_and_found_again():
    from toolkit.mixpanel.client import ServiceAccount

    path = credentials.save_mixpanel(ServiceAccount("sa.two", "secret-in-file-2", "88", "eu"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"88": {"username": "sa.two", "secret": "secret-in-file-2", "region": "eu"}}
    found = credentials.find_mixpanel()               # the file's only project
    assert (found.username, found.secret, found.project_id, found.region) == ("sa.two", "secret-in-file-2", "88", "eu")
    assert credentials.find_mixpanel("99") is None


def test_a_file_others_can_read_is_refused():
    from toolkit.mixpanel.client import ServiceAccount

    path = credentials.save_mixpanel(ServiceAccount("sa.two", "secret-in-file-2", "88"))
    os.chmod(path, 0o644)
    with pytest.raises(CredentialsError, match="chmod 600"):
        credentials.find_mixpanel("88")


def test_none_says_where_to_put_them():
    with pytest.raises(CredentialsError) as caught:
        credentials.require_mixpanel("5")
    assert "MIXPANEL_USERNAME" in str(caught.value) and "MIXPANEL_SECRET" in str(caught.value)
    assert "mixpanel.json" in str(caught.value)
