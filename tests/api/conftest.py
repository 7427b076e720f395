from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from settings import Settings
from tests.conftest import API_TOKEN, REDIS_URL, ControlledClient


@pytest.fixture
def api_settings(db_url: str, model_store: Path, queue_name: str, allowed_roots: list[Path]) -> Settings:
    return api_settings_for(db_url, model_store, queue_name, allowed_roots)


def api_settings_for(database_url: str, model_store: Path, queue_name: str, allowed_roots: list[Path]) -> Settings:
    """The API's settings in tests: real Redis, batches of 4, the test token, these allowed roots."""
    return Settings(
        database_url=database_url,
        broker_url=REDIS_URL,
        model_store=model_store,
        queue_name=queue_name,
        batch_size=4,
        api_token=SecretStr(API_TOKEN),
        allowed_roots=allowed_roots,
    )


@pytest.fixture
def client(api_settings: Settings) -> Iterator[TestClient]:
    """The API, sending the right bearer token with every request."""
    with ControlledClient(api_settings) as test_client:
        yield test_client
