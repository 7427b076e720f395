"""`catsdogs submit` sends the API's token, and says clearly when there is none to send."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from cli import services
from cli.main import cmd_submit
from settings import Settings
from tests.conftest import API_TOKEN, REDIS_URL
from tests.factories import copy_photos


def _args(folder: Path, api: str) -> argparse.Namespace:
    return argparse.Namespace(folder=folder, api=api, model=None, no_wait=True)


def test_submit_without_a_token_says_how_to_set_it(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="API_TOKEN is not set; set it to the token the API was started with"):
        cmd_submit(_args(tmp_path, "http://127.0.0.1:9"), Settings(api_token=None, dev_mode=False))


@pytest.mark.slow
def test_submit_sends_the_token_to_a_running_api(
    tmp_path: Path,
    photos: list[Path],
    sqlite_url: str,
    model_store: Path,
    queue_name: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "photos"
    copy_photos(photos[:2], folder)
    env = {
        **os.environ,
        "DATABASE_URL": sqlite_url,
        "BROKER_URL": REDIS_URL,
        "MODEL_STORE": str(model_store),
        "QUEUE_NAME": queue_name,
        "API_TOKEN": API_TOKEN,
        "ALLOWED_ROOTS": json.dumps([str(tmp_path)]),
    }
    log = tmp_path / "api.log"
    api, url = services.start_api(env, log)
    try:
        assert cmd_submit(_args(folder, url), Settings(api_token=SecretStr(API_TOKEN))) == 0
        job = json.loads(capsys.readouterr().out)
        assert job["folder"] == str(folder) and job["status"] == "queued"
        with pytest.raises(SystemExit, match=r"job refused \(401\): invalid bearer token"):
            cmd_submit(_args(folder, url), Settings(api_token=SecretStr("not-the-token")))
        with pytest.raises(SystemExit, match=r"job refused \(403\): folder / is outside the allowed roots"):
            cmd_submit(_args(Path("/"), url), Settings(api_token=SecretStr(API_TOKEN)))
    finally:
        services.stop(api)
    assert "POST /jobs" in log.read_text() and API_TOKEN not in log.read_text()
