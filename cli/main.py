"""`catsdogs`: run a folder end to end on one machine, submit and follow jobs, migrate, export results.

catsdogs run ../shared/data/catsdogs/test      # everything, on the embedded defaults (its API gets a random token)
catsdogs migrate                               # create or upgrade the schema; register published models
catsdogs submit FOLDER --api http://host:8000  # submit to a running API (token from API_TOKEN) and follow the job
catsdogs jobs | status JOB | cancel JOB | models --api http://host:8000   # ask a running API
catsdogs results JOB_ID --format parquet --output r.parquet --api ...    # download a job's results
catsdogs corrections export --output corrections.csv --api ...           # corrected labels, for training
catsdogs sweeper                               # re-send lost batches and continue stalled listings
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from cli import corrections, progress, remote
from cli.remote import answer, api_client, connect
from settings import Settings, get_settings

QUICK_TRAINING = ["--max-epochs", "2", "--limit-per-class", "2000"]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    result: int = args.command(args, get_settings())
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="catsdogs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="start a worker and the API, classify a folder, print a summary")
    run.add_argument("folder", type=Path)
    run.add_argument(
        "--workers", type=int, default=None,
        help="worker processes to start (default: one per core, up to 4, on a CPU; 1 with a GPU)",
    )  # fmt: skip
    run.add_argument("--model", help="model version (default: the latest published)")
    run.add_argument(
        "--serve", action="store_true", help="keep the API, its web page and the workers up after the job, until Ctrl-C"
    )
    run.set_defaults(command=cmd_run)
    migrate = sub.add_parser("migrate", help="create or upgrade the database schema and register published models")
    migrate.set_defaults(command=cmd_migrate)
    submit = sub.add_parser(
        "submit", help="submit a folder to a running API and follow the job (sends the token in API_TOKEN)"
    )
    submit.add_argument("folder", type=Path)
    submit.add_argument("--api", default=None, help="API base URL (default: from API_HOST and API_PORT)")
    submit.add_argument("--model")
    submit.add_argument("--no-wait", action="store_true", help="print the job id and return")
    submit.set_defaults(command=cmd_submit)
    export = sub.add_parser("export-model", help="write a published version to a folder, e.g. as the reference model")
    export.add_argument("version")
    export.add_argument("dest", type=Path)
    export.add_argument("--float32", action="store_true", help="keep full precision (default: float16 weights)")
    export.set_defaults(command=cmd_export_model)
    sweeper = sub.add_parser(
        "sweeper", help="run the sweeper: re-send lost batches, continue stalled listings (one acts at a time)"
    )
    sweeper.set_defaults(command=cmd_sweeper)
    remote.add_commands(sub)
    corrections.add_commands(sub)
    return parser


# --- commands -----------------------------------------------------------------


def cmd_migrate(_: argparse.Namespace, settings: Settings) -> int:
    added = migrate(settings)
    print(f"database ready: {_redact(settings.database_url)}; registered models: {', '.join(added) or 'none new'}")
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from cli import services

    migrate(settings)
    ensure_model(settings)
    logs = Path("var/logs")
    folder = args.folder.expanduser().resolve()
    # The API started here accepts only this run's random token, and only this folder.
    token = secrets.token_urlsafe(32)
    api_env = {"API_TOKEN": token, "ALLOWED_ROOTS": json.dumps([str(folder)])}
    args.workers = args.workers or default_workers(settings)
    with services.broker(settings.broker_url) as broker_url:
        env = {
            **os.environ,
            "BROKER_URL": broker_url,
            "TORCH_THREADS": str(max(1, (os.cpu_count() or 1) // args.workers)),
        }
        with _running(settings, env, api_env, logs, args.workers) as api_url, api_client(api_url, token) as client:
            job = submit_and_follow(client, folder, args.model)
            print_summary(client, job["id"], settings, api_stays=args.serve)
            if args.serve:
                _serve_until_stopped(api_url, token)
            return 0 if job["status"] in ("succeeded", "partially_failed") else 1


def _serve_until_stopped(api_url: str, token: str) -> None:
    """Keep everything `run` started up, for the web page, until SIGINT or SIGTERM."""
    import signal
    import threading

    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    print(f"\nreview the results at {api_url}/ (token {token}); Ctrl-C stops everything", flush=True)
    stopped.wait()


def default_workers(settings: Settings) -> int:
    """One single-threaded worker process per core on a CPU, where two processes of one thread beat one
    of two (docs/performance.md), up to 4 as each holds its own model (about 0.8 GB); one for a GPU."""
    from classifier.serving import pick_device

    if pick_device(settings.device).type == "cuda":
        return 1
    return min(os.cpu_count() or 1, 4)


@contextlib.contextmanager
def _running(
    settings: Settings, env: dict[str, str], api_env: dict[str, str], logs: Path, workers: int
) -> Iterator[str]:
    from cli import services

    supervisor = services.Supervisor()
    for i in range(workers):
        start = functools.partial(services.start_worker, env, logs / f"worker-{i}.log", settings.queue_name)
        supervisor.add(f"worker {i}", start)
    supervisor.add("sweeper", lambda: services.start_sweeper(env, logs / "sweeper.log"))
    print(f"started {workers} worker process(es) and the sweeper; logs in {logs}/", flush=True)
    api = None
    try:
        api, url = services.start_api({**env, **api_env}, logs / "api.log")
        print(f"API at {url} (OpenAPI docs at {url}/docs)", flush=True)
        # The token is this run's own and dies with it: printed so that the page can be opened meanwhile.
        print(f"web page at {url}/ while this runs; sign in with the token {api_env['API_TOKEN']}", flush=True)
        yield url
    finally:
        supervisor.stop()
        if api is not None:
            services.stop(api)


def cmd_sweeper(_: argparse.Namespace, settings: Settings) -> int:
    import logging

    from control.sweep import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(settings)
    return 0


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    with connect(args, settings, "submit") as client:
        if args.no_wait:
            print(json.dumps(post_job(client, args.folder, args.model), indent=2))
            return 0
        job = submit_and_follow(client, args.folder, args.model)
        print_summary(client, job["id"], settings, api_stays=True)
    return 0 if job["status"] in ("succeeded", "partially_failed") else 1


def cmd_export_model(args: argparse.Namespace, settings: Settings) -> int:
    from classifier.store import export

    meta = export(settings.model_store, args.version, args.dest, half=not args.float32)
    print(f"wrote {args.version} to {args.dest} ({meta['weights_dtype']}, sha256 {meta['weights_sha256'][:12]}...)")
    return 0


# --- pieces -------------------------------------------------------------------


def migrate(settings: Settings) -> list[str]:
    """Upgrade the schema, install the reference model into an empty store, register the store's versions."""
    from classifier.store import install_reference, read_all_meta
    from db.migrate import upgrade
    from db.registry import register_missing
    from db.session import make_engine, make_session_factory

    upgrade(settings.database_url)
    if installed := install_reference(settings.reference_model, settings.model_store):
        print(f"installed the reference model from {settings.reference_model} as {installed}")
    engine = make_engine(settings.database_url)
    with make_session_factory(engine).begin() as session:
        added = register_missing(session=session, metas=read_all_meta(settings.model_store))
    engine.dispose()
    return added


def ensure_model(settings: Settings) -> None:
    """Train and publish a short model when the store has none (and no reference model is shipped)."""
    from classifier.store import latest_version

    if latest_version(settings.model_store):
        return
    command = ["trainer", "fit", "--data", str(settings.data_dir), "--devices", "1", *QUICK_TRAINING]
    print(f"no published model in {settings.model_store}; training a short one: {' '.join(command)}", flush=True)
    subprocess.run([sys.executable, "-m", "trainer.cli", *command[1:]], check=True)
    migrate(settings)


def post_job(client: httpx.Client, folder: Path, model: str | None) -> dict[str, Any]:
    from classifier.files import path_to_text

    body = {"folder": path_to_text(folder.expanduser().absolute()), "model_version": model}
    job: dict[str, Any] = answer(client.post("/jobs", json=body), "job refused")
    return job


def submit_and_follow(client: httpx.Client, folder: Path, model: str | None) -> dict[str, Any]:
    job = post_job(client, folder, model)
    print(f"job {job['id']}: {job['folder']} with model {job['model_version']}", flush=True)
    return follow(client, job["id"])


def follow(client: httpx.Client, job_id: int, interval: float = 1.0) -> dict[str, Any]:
    """Show the job's progress until it reaches a final state (cli.progress); return its last state."""
    with progress.shown(sys.stdout) as show:
        while True:
            job: dict[str, Any] = answer(client.get(f"/jobs/{job_id}"), f"cannot read job {job_id}")
            show(job)
            if job["status"] in progress.FINAL_STATUSES:
                return job
            time.sleep(interval)


def print_summary(client: httpx.Client, job_id: int, settings: Settings, api_stays: bool) -> None:
    """The job's outcome, and how to get its results: through the API if it stays up, else from the database."""
    summary = answer(client.get(f"/jobs/{job_id}/summary"), f"cannot read job {job_id}'s summary")
    job, counts = summary["job"], summary["job"]["counts"]
    print(
        f"\njob {job_id}: {job['status']} in {job['elapsed_seconds'] or 0:.1f} s "
        f"({job['images_per_second'] or 0:.0f} images/s) with model {job['model_version']}"
    )
    print(
        f"  images: {counts['total']}  classified: {counts['done']}  failed: {counts['failed']}"
        f"  skipped: {counts['skipped']}  reused: {counts['reused']}"
    )
    for label, n in sorted(summary["labels"].items()):
        print(f"  {label}: {n}")
    for reason, n in summary["failure_reasons"].items():
        print(f"  failed ({n}): {reason}")
    _print_skipped(summary["skipped"])
    if api_stays:
        print(f"results: catsdogs results {job_id} --api {str(client.base_url).rstrip('/')} --format csv "
              f"--output results-{job_id}.csv (or jsonl, parquet)")  # fmt: skip
    else:
        print(f"results: table `result` (job_id = {job_id}) in {_redact(settings.database_url)}")
        print(f"  export: catsdogs results {job_id} --database --format csv --output results-{job_id}.csv")
    print(f"  query:  GET /jobs/{job_id}/results?label=cat&min_confidence=0.9 on the API (catsdogs-api)")


def _print_skipped(skipped: dict[str, Any]) -> None:
    """The files the listing left out, by reason, with the first few paths of each."""
    from classifier.files import SKIP_REASONS

    for reason, n in skipped["counts"].items():
        print(f"  skipped ({n}): {SKIP_REASONS.get(reason, reason)}")
        for path in skipped["examples"].get(reason, []):
            print(f"    {path}")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    sys.exit(main())
