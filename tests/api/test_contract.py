"""The OpenAPI document is the contract: schemathesis runs every check over every route, with a fixed budget.

The app is served by uvicorn over real PostgreSQL and Redis; the allowed root holds a few real
photos. The document is read from an app built without any connection, as a client would see it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from pydantic import SecretStr

from api.main import create_app
from settings import Settings
from tests.api.conftest import api_settings_for
from tests.api.test_large_folder import serving
from tests.conftest import API_TOKEN, AUTH
from tests.factories import copy_photos

EXAMPLES_PER_ROUTE = 100
DOCUMENT = create_app(Settings(database_url="sqlite://", api_token=SecretStr(API_TOKEN))).openapi()
schema = schemathesis.openapi.from_dict(DOCUMENT)


@pytest.fixture(scope="module")
def api_url(
    pg_url: str, model_store: Path, tmp_path_factory: pytest.TempPathFactory, photos: list[Path]
) -> Iterator[str]:
    root = tmp_path_factory.mktemp("contract")
    copy_photos(photos[:2], root / "photos")
    settings = api_settings_for(pg_url, model_store, "gpu-contract", [root])
    settings = settings.model_copy(update={"webhook_secret": SecretStr("contract-webhook-secret")})  # notify_url ok
    with serving(create_app(settings)) as url:
        yield url


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_ROUTE,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_every_route_keeps_the_contract(case, api_url: str) -> None:  # type: ignore[no-untyped-def]
    case.call_and_validate(base_url=api_url, headers=AUTH)
