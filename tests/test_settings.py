from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from settings import Settings


@pytest.mark.parametrize(
    ("value", "roots"),
    [
        ('["/photos", "/srv/a,b"]', [Path("/photos"), Path("/srv/a,b")]),
        ("/photos, /srv/more", [Path("/photos"), Path("/srv/more")]),
        ("/photos", [Path("/photos")]),
        ("", []),
    ],
)
def test_allowed_roots_from_a_json_list_or_comma_separated(
    monkeypatch: pytest.MonkeyPatch, value: str, roots: list[Path]
) -> None:
    monkeypatch.setenv("ALLOWED_ROOTS", value)
    assert Settings().allowed_roots == roots


def test_bad_json_roots_say_what_is_expected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_ROOTS", '["/photos"')
    with pytest.raises(ValidationError, match="comma-separated"):
        Settings()


def test_token_is_secret_and_an_empty_one_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKEN", "s3cret-value")
    settings = Settings()
    assert settings.api_token is not None and settings.api_token.get_secret_value() == "s3cret-value"
    assert "s3cret-value" not in repr(settings)
    monkeypatch.setenv("API_TOKEN", "")
    assert Settings().api_token is None
