"""A one-node Ray cluster on this machine, started and stopped by tests (and by hand).

``ray start --head --block`` runs in a new session: every process of the node (GCS, raylet,
agents, workers) descends from it and inherits a marker in its environment, and on SIGTERM it
stops them all; whatever is left is found by the marker and killed. Nothing here calls
``ray stop``, which stops every Ray process of the machine, other users' clusters included.
The node gets its own temporary folder and free ports, so it neither sees nor disturbs a
Ray cluster someone else runs on the same machine.

By hand (the printed RAY_ADDRESS is what ``hydra/launcher=ray_cluster`` connects to)::

    python tests/local_ray.py          # starts, prints the address, stops on Ctrl-C
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli() -> Path | None:
    """The ``ray`` command of this Python environment (None when ray is not installed)."""
    path = Path(sys.executable).with_name("ray")
    return path if path.exists() else None


def pids_with_env(entry: str) -> list[int]:
    """PIDs of the live processes (not this one) whose environment contains ``entry``
    (``KEY=value``): a process inherits it from whoever started it, whatever its group."""
    needle = b"\0" + entry.encode() + b"\0"  # a whole entry, not the end of another one
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in b"\0" + environ.read_bytes() + b"\0":
                pids.append(int(environ.parent.name))
        except (OSError, ValueError):
            continue  # exited, or not ours to read
    return [p for p in pids if p != os.getpid()]


class LocalRay:
    """One Ray head node with ``num_cpus`` CPUs and no GPU, on this machine only.

    Attributes:
        address: the GCS address (``host:port``) once started: RAY_ADDRESS for drivers.
        temp_dir: Ray's session folder root (logs of every worker under ``session_latest``).
    """

    def __init__(self, num_cpus: int = 2, env: dict[str, str] | None = None, cwd=None) -> None:
        self.num_cpus = num_cpus
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.address: str | None = None
        # Short: Ray's unix sockets live below it and socket paths are limited to 107 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="detbench-ray-", dir="/tmp"))
        self.log = self.temp_dir / "ray-start.log"
        self.proc: subprocess.Popen | None = None
        self.attempts = 0  # `ray start` runs so far
        # Inherited by every process of the node: how stop() finds them, and only them.
        self.marker = f"DETBENCH_LOCAL_RAY={self.temp_dir}"
        self.env["DETBENCH_LOCAL_RAY"] = str(self.temp_dir)

    def start(self, timeout: float = 300, attempts: int = 5) -> str:
        """Start the node, wait until it accepts drivers; return its address.

        On a loaded machine Ray's own start-up deadlines (its agents must report within
        seconds) can pass: a node that dies while starting is stopped and started again, up
        to ``attempts`` times; the last failure is raised with the log's tail.
        """
        cli = ray_cli()
        if cli is None:
            raise RuntimeError("ray is not installed: pip install -e '.[cluster]'")
        failures = []
        for _ in range(attempts):
            try:
                return self._start_once(cli, timeout)
            except RuntimeError as e:
                failures.append(str(e))
                self.stop()
        raise RuntimeError(f"Ray failed to start {attempts} times; last:\n{failures[-1]}")

    def _start_once(self, cli: Path, timeout: float) -> str:
        command = [
            str(cli), "start", "--head", "--block",
            "--node-ip-address", "127.0.0.1",  # Ray replaces loopback by this host's address
            "--port", str(free_port()),
            "--num-cpus", str(self.num_cpus), "--num-gpus", "0",
            "--temp-dir", str(self.temp_dir),
            "--object-store-memory", str(100 * 1024**2),  # the jobs pass no large objects
            "--include-dashboard", "false", "--disable-usage-stats",
            # Fewer Python processes to start on a loaded machine: no autoscaler (one fixed
            # node) and no log forwarding to drivers (workers still log to session_latest/logs).
            "--no-monitor", "--include-log-monitor", "false",
            # Every fixed default port moved to a free one: another cluster may hold them.
            "--dashboard-port", str(free_port()),
            "--ray-client-server-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--min-worker-port", "0", "--max-worker-port", "0",  # any free port per worker
        ]  # fmt: skip
        self.attempts += 1
        address_file = self.temp_dir / "ray_current_cluster"
        address_file.unlink(missing_ok=True)
        with self.log.open("a") as out:
            out.write(f"--- attempt {self.attempts}: {' '.join(command)}\n")
            out.flush()
            self.proc = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env, "RAY_agent_register_timeout_ms": "600000"},  # slow agents
                cwd=self.cwd,
                start_new_session=True,  # its own process group: stop() ends exactly it
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited {self.proc.returncode}:\n{self._tail()}")
            if address_file.exists() and "block forever" in self._attempt_log():
                self.address = address_file.read_text().strip()
                return self.address
            time.sleep(0.5)
        raise RuntimeError(f"Ray did not start within {timeout:.0f} s:\n{self._tail()}")

    def _attempt_log(self) -> str:
        return self.log.read_text().rsplit("--- attempt ", 1)[-1]

    def session_logs(self) -> Path:
        """The ``logs`` folder of this node's session (``worker-*.out/err`` per worker)."""
        return self.temp_dir / "session_latest" / "logs"

    def processes(self) -> list[int]:
        """PIDs of this node's processes still alive: ``ray start`` and everything it started
        (GCS, raylet, agents, and the workers, which the raylet puts in process groups of
        their own), recognized by the marker in their inherited environment."""
        return pids_with_env(self.marker)

    def stop(self, timeout: float = 120) -> list[int]:
        """SIGTERM ``ray start``, which stops its node; SIGKILL whatever of the node is left
        after ``timeout``. Returns the PIDs that had to be killed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        deadline = time.monotonic() + timeout
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        killed = self.processes()
        for pid in killed:  # only processes of this node
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.wait(timeout=30)
        self.proc = None
        return killed

    def remove(self) -> None:
        """Delete the temporary folder (after :meth:`stop`)."""
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _tail(self, n: int = 4000) -> str:
        return self.log.read_text()[-n:] if self.log.exists() else ""


if __name__ == "__main__":
    ray = LocalRay()
    try:
        print(f"export RAY_ADDRESS={ray.start()}   # Ctrl-C stops this cluster", flush=True)
        ray.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        ray.stop()
        ray.remove()
