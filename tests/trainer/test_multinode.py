"""Multi-node training for real: `trainer fit --num-nodes 2 --devices 1` on two hosts (network namespaces
with addresses and host names of their own), gloo over the veth link, MASTER_ADDR on node 0.

Rank 0 alone publishes; both nodes end with the same weights (each rank prints a fingerprint of its
weights); and the result equals `--devices 2` on one host with the same global batch, in float64
(tests/trainer/test_ddp_equivalence.py says why float64).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from classifier.store import list_versions, read_meta
from db.migrate import upgrade
from tests.hosts import Network, can_make_hosts
from tests.trainer.test_ddp_equivalence import REPO_ROOT, _fit_argv, _last_state

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not can_make_hosts(), reason="needs root and iproute2 to make network namespaces"),
]


def test_two_nodes_train_like_two_processes_on_one(tmp_path: Path, data_dir: Path) -> None:
    trainer = str(Path(sys.executable).with_name("trainer"))
    store, database = tmp_path / "store", f"sqlite:///{tmp_path}/db.sqlite"
    upgrade(database)
    network = Network(["n0", "n1"])
    try:
        env = {**os.environ, "MASTER_ADDR": network["n0"].address, "MASTER_PORT": "29533", "DATABASE_URL": database,
               "PYTHONPATH": str(REPO_ROOT)}  # fmt: skip
        procs = []
        for rank, name in enumerate(("n0", "n1")):
            argv = _fit_argv(data_dir, tmp_path / name, 1, 4)
            argv = [a for a in argv if a != "--no-publish"] + ["--num-nodes", "2", "--model-store", str(store)]
            node_env = {**env, "NODE_RANK": str(rank), "GLOO_SOCKET_IFNAME": network[name].interface}
            procs.append(network[name].start([trainer, *argv], node_env, tmp_path / f"{name}.log", cwd=REPO_ROOT))
        deadline = time.monotonic() + 420
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.5)
        logs = {name: (tmp_path / f"{name}.log").read_text() for name in ("n0", "n1")}
        assert all(p.returncode == 0 for p in procs), {n: log[-3000:] for n, log in logs.items()}
    finally:
        network.close()

    fingerprints = {name: _fingerprint(log) for name, log in logs.items()}
    assert fingerprints["n0"] == fingerprints["n1"], fingerprints  # both nodes end with the same weights
    assert "rank 0 of 2" in logs["n0"] and "rank 1 of 2" in logs["n1"]
    assert list_versions(store) == ["v1"] and "published v1" in logs["n0"] and "published" not in logs["n1"]
    training = read_meta(store, "v1")["training"]
    assert training["num_nodes"] == 2 and training["world_size"] == 2 and training["global_batch_size"] == 8

    one_host = [trainer, *_fit_argv(data_dir, tmp_path / "one-host", 2, 4)]
    done = subprocess.run(one_host, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _fingerprint(done.stdout) != ""
    (steps_nodes, nodes), (steps_one, one) = _last_state(tmp_path / "n0"), _last_state(tmp_path / "one-host")
    assert steps_nodes == steps_one == 4
    for name, value in one.items():
        assert torch.allclose(value.double(), nodes[name].double(), rtol=1e-5, atol=1e-6), name


def _fingerprint(log: str) -> str:
    lines = [line for line in log.splitlines() if ": weights " in line]
    return lines[-1].rsplit(" ", 1)[-1] if lines else ""
