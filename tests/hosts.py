"""Separate hosts on one machine, for tests of what crosses a network: Linux network namespaces on a bridge.

Each host is a network namespace with one veth link to a bridge in the test's own namespace, an address
of its own in a private /24, and (through `unshare --uts`) a host name of its own, so that its processes
look like another machine's to lease holders: a process on another host is never known to be dead, only
silent. A host's link can be cut (`ip link set ... down` on the bridge's side) and brought back. Needs
root and iproute2; everything made is removed by `Network.close`, also after a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


def can_make_hosts() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("unshare") is not None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Host:
    """One namespace: its name, its address, and the processes started in it."""

    def __init__(self, network: Network, name: str, address: str) -> None:
        self.network, self.name, self.address = network, name, address
        self.netns = f"{network.prefix}-{name}"
        self.bridge_end = f"{network.prefix}{name}"[:15]
        self.interface = f"{network.prefix}x{name}"[:15]  # its end of the link, inside the namespace
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: Sequence[str], env: dict[str, str], log_path: Path, user: str | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
        """Run `args` on this host (its namespace and host name), logging to `log_path`."""
        inner = ["runuser", "-u", user, "--", *args] if user else list(args)
        script = 'hostname "$0" && exec "$@"'
        command = ["ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c", script, self.name, *inner]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
        self.procs.append(proc)
        return proc

    def kill_everything(self) -> int:
        """SIGKILL every process on this host, children included, as a power cut would; return how many."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            proc.wait()
        return len(pids)

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True, check=False)
        return [int(p) for p in out.stdout.split()]

    def cut_link(self) -> None:
        """The network cable pulled: the host keeps running, but nothing it sends arrives."""
        _ip("link", "set", self.bridge_end, "down")

    def restore_link(self) -> None:
        _ip("link", "set", self.bridge_end, "up")


class Network:
    """A bridge and hosts on it, 10.<n>.<m>.0/24; the test's own namespace is .254 on the bridge."""

    def __init__(self, names: Sequence[str]) -> None:
        tag = os.getpid() % 10_000
        self.prefix = f"cd{tag}"
        self.subnet = f"10.{200 + tag % 50}.{tag % 250}"
        self.bridge = f"{self.prefix}br"
        self.hosts: dict[str, Host] = {}
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            self._let_the_bridge_forward()
            for i, name in enumerate(names, start=1):
                self.hosts[name] = self._add_host(name, f"{self.subnet}.{i}")
        except Exception:
            self.close()
            raise

    def _add_host(self, name: str, address: str) -> Host:
        host = Host(self, name, address)
        _ip("netns", "add", host.netns)
        self.hosts[name] = host  # from here on, close() removes it
        inside = host.interface
        _ip("link", "add", host.bridge_end, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", host.netns)
        _ip("link", "set", host.bridge_end, "master", self.bridge)
        _ip("link", "set", host.bridge_end, "up")
        for args in (["addr", "add", f"{address}/24", "dev", inside], ["link", "set", inside, "up"],
                     ["link", "set", "lo", "up"]):  # fmt: skip
            _ip("netns", "exec", host.netns, "ip", *args)
        return host

    def _let_the_bridge_forward(self) -> None:
        """Where Docker runs (or ran since boot), bridged packets pass iptables' FORWARD chain, whose policy it
        sets to DROP: accept this bridge's own traffic, for as long as the network lives."""
        self.forward_rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        if shutil.which("iptables") is None:
            self.forward_rule = []
            return
        subprocess.run(["iptables", "-I", *self.forward_rule], check=True, capture_output=True)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def close(self) -> None:
        """Kill every process on every host and remove the namespaces, links and bridge."""
        for host in self.hosts.values():
            host.kill_everything()
        time.sleep(0.2)
        for host in self.hosts.values():
            subprocess.run(["ip", "link", "del", host.bridge_end], capture_output=True, check=False)
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
        if getattr(self, "forward_rule", None):
            subprocess.run(["iptables", "-D", *self.forward_rule], capture_output=True, check=False)
