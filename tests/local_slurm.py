"""A one-node SLURM cluster on this machine (munged, slurmctld, slurmd), for tests and by hand.

Everything lives in one temporary folder: a fresh munge key and socket, ``slurm.conf`` (this
host as controller and only node, all its CPUs), state, spool, pid and log files. The daemons
run in the foreground as children of this process (``munged -F`` as the munge user,
``slurmctld -D`` and ``slurmd -D`` as root) on free ports and with their own munge socket
(``AuthInfo=socket=...``): a SLURM or munge someone else runs on the machine is neither used
nor disturbed, and :meth:`LocalSlurm.stop` ends exactly what was started here plus the jobs
of this cluster (found by the ``SLURM_CONF`` in their environment).

Needs root (slurmd starts jobs as their user) and Debian's packages::

    apt-get install -y slurm-wlm munge
    python tests/local_slurm.py      # as root: prints `export SLURM_CONF=...`; Ctrl-C stops it

No cgroups, no accounting database: ``proctrack/linuxproc``, ``task/none``,
``select/cons_tres``, accounting and job completion ``none`` (so ``sacct`` fails; submitit
warns and falls back to ``squeue``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from local_ray import free_port, pids_with_env

DAEMONS = ("munged", "slurmctld", "slurmd")
COMMANDS = ("sbatch", "squeue", "scancel", "sinfo", "srun")
PARTITION = "detbench"


def unavailable() -> str | None:
    """Why a local SLURM cluster cannot be started here, or None when it can be tried."""
    if os.geteuid() != 0:
        return "needs root (slurmd runs jobs as their user)"
    missing = [c for c in DAEMONS + COMMANDS if shutil.which(c) is None]
    if missing:
        return f"{', '.join(missing)} not found: apt-get install -y slurm-wlm munge"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no munge user: apt-get install -y munge"
    return None


class LocalSlurm:
    """One SLURM controller + compute node (this host) with one partition, ``detbench``.

    Attributes:
        root: the temporary folder holding everything (logs: ``*.log`` in it).
        conf: the ``slurm.conf``; export ``SLURM_CONF`` (see :attr:`env`) to use the cluster.
        host: this host's short name, the node's name.
        cpus: CPUs of the node (all of this machine's).
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="detbench-slurm-", dir="/tmp"))
        self.root.chmod(0o755)  # the munge user must reach its folder below
        self.conf = self.root / "slurm.conf"
        self.host = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1  # replaced by what `slurmd -C` reports
        self.munge_dir = self.root / "munge"
        self.socket = self.munge_dir / "munge.socket"
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict[str, str]:
        """This process's environment with ``SLURM_CONF`` pointing at this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self, timeout: float = 180) -> None:
        """Write the key and the config, start the three daemons, wait for the node to be idle.

        Raises:
            RuntimeError: a step failed; the message names it and quotes the daemon's log.
        """
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        self._munge_key()
        self._write_conf()
        self._start_munged(timeout)
        for name in ("slurmctld", "slurmd"):
            self._spawn(name, [shutil.which(name), "-D", "-f", str(self.conf)])
        self._wait_idle(timeout)

    def _munge_key(self) -> None:
        munge = pwd.getpwnam("munge")
        self.munge_dir.mkdir()
        self.munge_dir.chmod(0o755)  # munged: clients need execute permission to its socket
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))  # munged accepts any key of 32 bytes or more
        key.chmod(0o400)
        for path in (self.munge_dir, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)

    def _write_conf(self) -> None:
        for sub in ("state", "spool"):
            (self.root / sub).mkdir()
        r = self.root
        # The node as slurmd sees it (CPUs, sockets, cores, threads, memory).
        hardware = subprocess.run(
            ["slurmd", "-C"], capture_output=True, text=True, timeout=60, check=True
        ).stdout.splitlines()[0]
        fields = dict(item.split("=", 1) for item in hardware.split())
        self.host, self.cpus = fields["NodeName"], int(fields["CPUs"])
        self.conf.write_text(
            f"""\
ClusterName=detbench
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
{hardware} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName={PARTITION} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
"""
        )

    def _start_munged(self, timeout: float) -> None:
        d = self.munge_dir
        command = [shutil.which("munged"), "-F", f"--socket={self.socket}"]
        command += [f"--key-file={d}/munge.key", f"--pid-file={d}/munged.pid"]
        command += [f"--log-file={d}/munged.log", f"--seed-file={d}/munged.seed"]
        self._spawn("munged", command, user="munge")
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            self._check_alive("munged")
            if time.monotonic() > deadline:
                raise RuntimeError(f"munged: no socket after {timeout:.0f} s\n{self.logs()}")
            time.sleep(0.2)

    def _spawn(self, name: str, command: list[str], user: str | None = None) -> None:
        out = (self.root / f"{name}.out").open("w")
        self.procs[name] = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.env,
            user=user,
            group=user,
            start_new_session=True,  # a Ctrl-C meant for a test does not reach the daemons
        )
        out.close()

    def _check_alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise RuntimeError(
                f"{name} exited with status {proc.returncode}: "
                f"{' '.join(map(str, proc.args))}\n{self.logs()}"
            )

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for name in self.procs:
                self._check_alive(name)
            done = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%T", "-n", self.host],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            state = (done.stdout + done.stderr).strip()
            if done.returncode == 0 and state == "idle":
                return
            time.sleep(1)
        raise RuntimeError(
            f"node {self.host} not idle after {timeout:.0f} s ({state})\n{self.logs()}"
        )

    def logs(self, n: int = 3000) -> str:
        """The end of every daemon's log and output, for error messages."""
        parts = []
        for path in sorted([*self.root.glob("*.log"), *self.root.glob("*.out")]):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-n:]}")
        munged = self.munge_dir / "munged.log"
        if munged.exists():
            parts.append(f"--- munged.log\n{munged.read_text(errors='replace')[-n:]}")
        return "\n".join(parts)

    def stop(self, timeout: float = 60) -> list[int]:
        """Cancel this cluster's jobs, stop its daemons, kill whatever of it is left.

        Returns:
            The PIDs that still ran after the daemons had stopped and were killed (job
            steps of this cluster, found by its ``SLURM_CONF``).
        """
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            jobs = subprocess.run(
                ["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True,
                timeout=60, check=False,
            ).stdout.split()  # fmt: skip
            if jobs:
                subprocess.run(["scancel", *jobs], env=self.env, timeout=60, check=False)
        for name in ("slurmd", "slurmctld", "munged"):  # reverse start order
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        leftover = pids_with_env(f"SLURM_CONF={self.conf}")
        for pid in leftover:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return leftover

    def remove(self) -> None:
        """Delete the temporary folder (after :meth:`stop`)."""
        shutil.rmtree(self.root, ignore_errors=True)


if __name__ == "__main__":
    cluster = LocalSlurm()
    try:
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}   # Ctrl-C stops this cluster", flush=True)
        cluster.procs["slurmctld"].wait()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
        cluster.remove()
