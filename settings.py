"""The one settings object, read from environment variables (and an optional .env file).

Defaults run on one machine: a SQLite file and the model store under ./var,
Redis on localhost:6379.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # URLs may hold passwords: left out of repr(), so that logging the settings does not show them.
    database_url: str = Field(default="sqlite:///var/catsdogs.db", repr=False)
    broker_url: str = Field(default="redis://127.0.0.1:6379/0", repr=False)
    model_store: Path = Path("var/models")
    # The shipped reference model, installed as the first version of an empty store.
    reference_model: Path = Path(__file__).resolve().parent / "models" / "reference"
    runs_dir: Path = Path("var/runs")
    data_dir: Path = Path("../shared/data/catsdogs")
    queue_name: str = "gpu"
    batch_size: int = Field(default=256, ge=1, le=4096)  # images per task (one results write each)
    # A job's `reuse` when POST /jobs does not say: earlier results of the same bytes and model are reused.
    reuse_results: bool = True
    # Images per forward pass. 0: BATCH_SIZE on a GPU; on a CPU 128 in bf16 and 64 in fp32, which keep every
    # activation in the heap that classifier.serving.keep_freed_memory keeps (docs/performance.md).
    forward_batch: int = Field(default=0, ge=0, le=4096)
    device: str = "auto"  # "auto": CUDA when available, else CPU
    torch_threads: int = Field(default=0, ge=0)  # 0: all cores divided by worker concurrency
    # "eager": PyTorch with BatchNorm folded in; "compiled": TorchInductor (needs a C++ compiler,
    # compiles for 20-40 s when a worker process first loads a model; docs/performance.md).
    inference_backend: Literal["eager", "compiled"] = "eager"
    # "auto": bfloat16 where the hardware computes it natively (a CUDA GPU, a CPU with AMX or
    # AVX-512 BF16), which is 1.8-3 times faster there; "fp32" everywhere else. Confidences
    # move by a few hundredths at most, accuracy and calibration do not change (docs/performance.md).
    inference_precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Celery task events from every worker (three messages a task). Off: Flower turns them on while it
    # runs (its --enable_events, on by default), so they cost only while someone watches.
    task_events: bool = False
    # Benchmarks only (bench/fleet.py): > 0 makes workers skip decoding and the network, and answer "cat" at
    # 0.5 for every file after sleeping as long as an accelerator of this many images/s would take.
    bench_null_speed: float = Field(default=0.0, ge=0)
    lease_seconds: float = Field(default=30.0, gt=0)  # a running batch whose holder is silent this long is lost
    max_attempts: int = Field(default=5, ge=1)  # starts of one batch before its images are failed
    task_time_limit: int = Field(default=600, ge=10)  # a task running longer is killed (then retried)
    sweep_interval: float = Field(default=15.0, gt=0)  # how often lost batches and stalled listings are looked for
    resend_after: float = Field(default=60.0, ge=0)  # a queued batch older than this may be lost
    # Prometheus metrics: a worker's main process serves its pool's on WORKER_METRICS_PORT (it also needs
    # PROMETHEUS_MULTIPROC_DIR, see workers/metrics.py), the control plane on CONTROL_METRICS_PORT; 0: off.
    # The API serves GET /metrics on its own port.
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    control_metrics_port: int = Field(default=0, ge=0, le=65535)
    max_images_per_job: int = Field(default=1_000_000, ge=1)
    # Completion webhooks (control/notify.py): signed with WEBHOOK_SECRET (unset: POST /jobs refuses a
    # notify_url); up to WEBHOOK_MAX_ATTEMPTS attempts of WEBHOOK_TIMEOUT seconds each, the n-th retry after
    # about WEBHOOK_BACKOFF * 2**(n-1) seconds (8 attempts from 30 s: the last about an hour after the first).
    webhook_secret: SecretStr | None = Field(default=None, repr=False)
    webhook_max_attempts: int = Field(default=8, ge=1, le=100)
    webhook_backoff: float = Field(default=30.0, gt=0)
    webhook_timeout: float = Field(default=10.0, gt=0, le=120)
    # Thumbnails the API makes for the web page, cached here; past THUMBNAIL_CACHE_BYTES the least recently
    # used are deleted.
    thumbnail_cache: Path = Path("var/thumbnails")
    thumbnail_cache_bytes: int = Field(default=256 * 2**20, ge=0)
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # Every route but GET /health needs `Authorization: Bearer <api_token>`. Without a
    # token the API refuses to start, unless dev_mode is on (then authentication is off).
    api_token: SecretStr | None = None
    dev_mode: bool = False
    # Jobs may only read folders inside these (after resolving symlinks and ".."); empty:
    # every folder is refused, or, with dev_mode on, every folder is allowed.
    # ALLOWED_ROOTS is a JSON list ('["/photos", "/srv/more"]') or comma-separated paths.
    allowed_roots: Annotated[list[Path], NoDecode] = []

    @field_validator("api_token", "webhook_secret", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON list of paths ({exc}); or give comma-separated paths") from None
        return [part.strip() for part in text.split(",") if part.strip()]

    @field_validator("allowed_roots")
    @classmethod
    def _expand_home(cls, roots: list[Path]) -> list[Path]:
        return [root.expanduser() for root in roots]


@functools.cache
def get_settings() -> Settings:
    return Settings()
