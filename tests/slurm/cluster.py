"""A real one-node Slurm cluster for the tests: munge, mariadb, slurmdbd, slurmctld, slurmd.

    python -m tests.slurm.cluster start BASE    # prints `export SLURM_CONF=...`; Ctrl-C or `stop` ends it
    python -m tests.slurm.cluster stop BASE

Loopback only (slurmd and mariadb bind 127.0.0.1; slurmctld and slurmdbd, which Slurm 22.05
lets listen on every address, get free high ports of their own), every path (configs, state,
spool, logs, pid files, sockets, the database) under BASE, two fake GPUs as character device
nodes (mknod: Slurm checks that a GPU's File is a device; /dev/null twice is refused),
proctrack/cgroup so that a cancelled job leaves no process, and batch_sched_delay=0 so a job
starts at its submit rather than at the next scheduler pass.
Each daemon runs in the foreground (-D) as a child of this process, its pid in BASE/pids;
every wait has a timeout, and a pid from a pid file is killed only if its command line is
still that daemon's (pids wrap fast on a busy machine). Needs root (slurmd, mknod).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

CLUSTER = "mkdtest"
NODE = "mkdnode"
PARTITION = "mkdtest"
BINARIES = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct")
STEP_TIMEOUT = 30.0


class ClusterError(RuntimeError):
    pass


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]


def _which(name: str) -> str:
    found = shutil.which(name) or str(Path("/usr/sbin", name))
    if not Path(found).exists():
        raise ClusterError(f"{name} is not installed (apt-get install slurm-wlm slurmdbd mariadb-server munge)")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(what: str, check: object, timeout: float = STEP_TIMEOUT, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(every)
    raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Cluster:
    base: Path
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.base / "etc" / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What a client (sbatch, squeue, a daemon that calls them) needs to find this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    @property
    def partition(self) -> str:
        return PARTITION

    def client_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    # --- start ------------------------------------------------------------------------

    def start(self) -> Cluster:
        for sub in ("etc", "munge", "db", "state", "spool", "log", "pids", "dev", "run"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        os.chmod(self.base / "munge", 0o755)  # munged: the socket's folder must be searchable by all
        for name in ("slurmctld", "slurmd", "slurmdbd", "mariadb"):
            self.ports[name] = _free_port()
        (self.base / "ports.json").write_text(json.dumps(self.ports))
        try:
            self._munge()
            self._mariadb()
            self._write_slurm_configs()
            self._slurmdbd()
            self._slurmctld()
            self._slurmd()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.base / "log" / f"{name}.out", "ab")  # noqa: SIM115 (the child keeps it)
        with log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env, **(env or {})},
                start_new_session=True,
            )
        self.procs[name] = proc
        (self.base / "pids" / name).write_text(json.dumps({"pid": proc.pid, "argv0": Path(argv[0]).name}))

    def _alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            tail = (self.base / "log" / f"{name}.out").read_text(errors="replace")[-2000:]
            logs = sorted((self.base / "log").glob(f"{name}*.log"))
            more = logs[0].read_text(errors="replace")[-2000:] if logs else ""
            raise ClusterError(f"{name} exited during start-up:\n{tail}\n{more}")
        return True

    def _munge(self) -> None:
        key = self.base / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        os.chmod(key, 0o400)
        socket_path = self.base / "munge" / "munge.socket"
        self._spawn(
            "munged",
            [
                _which("munged"),
                "--foreground",
                "--force",
                f"--socket={socket_path}",
                f"--key-file={key}",
                f"--log-file={self.base / 'log' / 'munged.log'}",
                f"--pid-file={self.base / 'munge' / 'munged.pid'}",
                f"--seed-file={self.base / 'munge' / 'munged.seed'}",
            ],
        )
        _wait("munged's socket", lambda: self._alive("munged") and socket_path.exists())

    def _mariadb(self) -> None:
        db = self.base / "db"
        sock = self.base / "run" / "mysqld.sock"
        cnf = self.base / "etc" / "my.cnf"
        cnf.write_text(
            "[mysqld]\n"
            f"datadir={db}\nsocket={sock}\nport={self.ports['mariadb']}\nbind-address=127.0.0.1\n"
            f"pid-file={self.base / 'run' / 'mysqld.pid'}\nlog-error={self.base / 'log' / 'mariadb.log'}\n"
            "user=root\nskip-name-resolve\ninnodb_buffer_pool_size=16M\ninnodb_log_file_size=8M\n"
            "innodb_doublewrite=0\ninnodb_flush_log_at_trx_commit=0\nperformance_schema=off\n"
        )
        done = subprocess.run(
            [
                _which("mariadb-install-db"),
                f"--defaults-file={cnf}",
                f"--datadir={db}",
                "--auth-root-authentication-method=socket",
                "--user=root",
                "--skip-test-db",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise ClusterError(f"mariadb-install-db failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        self._spawn("mariadbd", [_which("mariadbd"), f"--defaults-file={cnf}"])
        sql = (
            "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'mkdtest';"
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
        )

        def ready() -> bool:
            self._alive("mariadbd")
            try:
                run = subprocess.run(
                    ["mariadb", f"--socket={sock}", "-u", "root", "-e", sql],
                    capture_output=True,
                    timeout=10,
                )
            except subprocess.TimeoutExpired:
                return False
            return run.returncode == 0

        _wait("mariadb", ready, every=0.1)

    def _write_slurm_configs(self) -> None:
        b = self.base
        munge_socket = b / "munge" / "munge.socket"
        for n in (0, 1):
            dev = b / "dev" / f"nvidia{n}"
            if not dev.exists():
                os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))  # a char device (as /dev/null's): a fake GPU
        self.conf.write_text(
            f"""ClusterName={CLUSTER}
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={self.ports["slurmctld"]}
SlurmdPort={self.ports["slurmd"]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
CommunicationParameters=NoInAddrAny
StateSaveLocation={b / "state"}
SlurmdSpoolDir={b / "spool" / "slurmd.%n"}
SlurmctldPidFile={b / "run" / "slurmctld.pid"}
SlurmdPidFile={b / "run" / "slurmd.%n.pid"}
SlurmctldLogFile={b / "log" / "slurmctld.log"}
SlurmdLogFile={b / "log" / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/cgroup
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={self.ports["slurmdbd"]}
AccountingStoragePass={munge_socket}
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
GresTypes=gpu
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=2
MinJobAge=120
InactiveLimit=0
SlurmdTimeout=60
MailProg=/bin/true
MpiDefault=none
NodeName={NODE} NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=8 RealMemory=4000 Gres=gpu:2 State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""
        )
        (b / "etc" / "gres.conf").write_text(f"AutoDetect=off\nNodeName={NODE} Name=gpu File={b / 'dev'}/nvidia[0-1]\n")
        (b / "etc" / "cgroup.conf").write_text(
            "CgroupPlugin=autodetect\nCgroupAutomount=no\nConstrainCores=no\nConstrainRAMSpace=no\n"
            "ConstrainDevices=no\n"
        )
        dbd = b / "etc" / "slurmdbd.conf"
        dbd.write_text(
            f"""AuthType=auth/munge
AuthInfo=socket={munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={self.ports["slurmdbd"]}
SlurmUser=root
LogFile={b / "log" / "slurmdbd.log"}
PidFile={b / "run" / "slurmdbd.pid"}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.ports["mariadb"]}
StorageUser=slurm
StoragePass=mkdtest
StorageLoc=slurm_acct_db
"""
        )
        os.chmod(dbd, 0o600)

    def _port_open(self, port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    def _slurmdbd(self) -> None:
        self._spawn("slurmdbd", [_which("slurmdbd"), "-D"])
        _wait("slurmdbd", lambda: self._alive("slurmdbd") and self._port_open(self.ports["slurmdbd"]))

    def _slurmctld(self) -> None:
        self.start_slurmctld()

    def start_slurmctld(self) -> None:
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-f", str(self.conf)])
        _wait("slurmctld", lambda: self._alive("slurmctld") and self._answers(["sinfo", "-h"]))

    def _slurmd(self) -> None:
        self._spawn("slurmd", [_which("slurmd"), "-D", "-N", NODE, "-f", str(self.conf)])
        _wait("an idle node", self._node_idle, timeout=60, every=0.2)

    def _answers(self, argv: list[str]) -> bool:
        try:
            done = subprocess.run(argv, capture_output=True, env=self.client_env(), timeout=5)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    def _node_idle(self) -> bool:
        self._alive("slurmd")
        try:
            done = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, env=self.client_env(), timeout=5
            )
        except subprocess.TimeoutExpired:
            return False
        return done.stdout.strip() == "idle"

    def restart_slurmctld(self) -> float:
        """Stop slurmctld (SIGTERM, as `systemctl restart` does) and start it again; seconds it was away."""
        started = time.monotonic()
        self._stop_one("slurmctld")
        self.start_slurmctld()
        return time.monotonic() - started

    # --- stop -------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every daemon (newest first), by pid, with a timeout on each wait; then the cgroups."""
        for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"):
            self._stop_one(name)
        _remove_slurm_cgroups()

    def _stop_one(self, name: str, timeout: float = 10.0) -> None:
        proc = self.procs.pop(name, None)
        pid_file = self.base / "pids" / name
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:  # slurmd may wait on a thread forever: SIGKILL
                    proc.kill()
                    proc.wait(timeout)
        elif pid_file.exists():
            stop_by_pid_file(pid_file, timeout)
        pid_file.unlink(missing_ok=True)


def stop_by_pid_file(pid_file: Path, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`, to the pid in `pid_file` if it is still that program."""
    try:
        record = json.loads(pid_file.read_text())
    except (OSError, ValueError):
        return
    pid, argv0 = int(record["pid"]), str(record["argv0"])

    def same() -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return bool(cmdline) and Path(cmdline[0].decode(errors="replace")).name == argv0

    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not same():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while same() and time.monotonic() < deadline:
            time.sleep(0.05)


def _remove_slurm_cgroups() -> None:
    """proctrack/cgroup (cgroup v1) leaves /sys/fs/cgroup/<ctl>/slurm*; remove the empty tree."""
    root = Path("/sys/fs/cgroup")
    for top in root.glob("*/slurm*"):
        for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                path.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    base = Path(argv[1]).resolve()
    if argv[0] == "stop":
        for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"):
            stop_by_pid_file(base / "pids" / name)
        _remove_slurm_cgroups()
        return 0
    started = time.monotonic()
    cluster = Cluster(base).start()
    print(f"cluster up in {time.monotonic() - started:.1f} s; partition {PARTITION}")
    print(f"export SLURM_CONF={cluster.conf}", flush=True)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    try:
        while not stopping:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
