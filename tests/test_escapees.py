"""Processes that leave their run's process group die with the run: 0 survivors.

tests/escaping_tree.py starts a root, a child and escapees (setsid, setpgid(0, 0), a double
fork, a continuous forker, a renamed process, one with an empty environment); each writes
its pid and start time, so survivors are counted exactly (a reused pid is not a survivor).
Through the engine, for each containment mechanism this machine has (the /proc walk
always, a cgroup of its own where one can be made), and through a real daemon: cancel, a
stage timeout, `mkd shutdown --stop-runs`, and the root's death while the daemon is down.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mkd import cgroup
from mkd import engine as engine_module
from mkd.engine import Engine, ExitRecord, LaunchSpec, ShimHandle
from mkd.postmortem import process_table
from mkd.procs import ProcStat, read_stat, run_members
from tests.escaping_tree import EXPECTED
from tests.harness import Home, wait_for

TREE = Path(__file__).with_name("escaping_tree.py")
MECHANISMS = ["proc"] + (["cgroup"] if Engine(containment="cgroup").containment == "cgroup" else [])


def recorded(folder: Path) -> dict[int, int]:
    """pid -> start ticks of every process the tree started (its own records)."""
    found = {}
    for entry in folder.iterdir() if folder.is_dir() else []:
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                found[int(entry.name)] = int(entry.read_text())
    return found


def survivors(folder: Path) -> list[int]:
    out = []
    for pid, ticks in recorded(folder).items():
        stat = read_stat(pid)
        if stat is not None and stat.state != "Z" and stat.start_ticks == ticks:
            out.append(pid)
    return sorted(out)


@pytest.fixture
def pids(tmp_path: Path) -> Iterator[Path]:
    """The tree's record folder; whatever survived a failed test is SIGKILLed afterwards."""
    folder = tmp_path / "pids"
    yield folder
    for _ in range(3):
        for pid in survivors(folder):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def started(folder: Path) -> dict[int, int]:
    return wait_for(lambda: len(recorded(folder)) >= EXPECTED + 2 and recorded(folder), 20, "the escapees")


def tree_argv(folder: Path, *extra: str) -> list[str]:
    return [sys.executable, str(TREE), str(folder), *extra]


# --- the engine, per mechanism --------------------------------------------------------------


@pytest.fixture(params=MECHANISMS)
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, token: str) -> Iterator[Engine]:
    monkeypatch.setenv("MKD_TEST_TOKEN", token)
    eng = Engine(containment=request.param)
    assert eng.containment == request.param
    yield eng
    eng.close()


def launch(engine: Engine, tmp_path: Path, argv: list[str], token: str, grace: float = 1.0) -> tuple[Path, ShimHandle]:
    attempt = tmp_path / "attempt"
    env = {"PATH": "/usr/bin:/bin", "MKD_TEST_TOKEN": token}
    return attempt, engine.launch(attempt, LaunchSpec(argv, env, None, attempt / "console.log", grace, 0, 3))


def finish(engine: Engine, attempt: Path, handle: ShimHandle, timeout: float = 20.0) -> ExitRecord:
    record: ExitRecord = wait_for(lambda: engine.poll(attempt, handle), timeout, "exit.json")
    return record


def containment_of(attempt: Path) -> tuple[str, str]:
    return (
        json.loads((attempt / "child.json").read_text())["containment"],
        json.loads((attempt / "exit.json").read_text())["containment"],
    )


@pytest.mark.parametrize("stubborn", [False, True], ids=["plain", "ignores-sigterm"])
def test_stop_kills_every_escapee(engine: Engine, tmp_path: Path, token: str, pids: Path, stubborn: bool) -> None:
    argv = tree_argv(pids, *(["--stubborn"] if stubborn else []))
    attempt, handle = launch(engine, tmp_path, argv, token)
    before = started(pids)
    sessions = {s.sid for s in (read_stat(pid) for pid in before) if s is not None}
    assert len(sessions) >= 6, "the escapees really left the root's session"
    engine.stop(handle, attempt)
    record = finish(engine, attempt, handle)
    assert survivors(pids) == []
    assert record.stop_requested
    assert record.signal == (signal.SIGKILL if stubborn else signal.SIGTERM)
    assert containment_of(attempt) == (engine.containment, engine.containment)


def test_the_post_mortem_table_lists_the_escapees(engine: Engine, tmp_path: Path, token: str, pids: Path) -> None:
    attempt, handle = launch(engine, tmp_path, tree_argv(pids), token)
    started(pids)
    alive = set(survivors(pids))  # before the table: the forker's later children may be missing from it
    table = process_table(engine.child(attempt), attempt)
    listed = {int(line.split()[0]) for line in table.splitlines()[2:]}
    assert alive <= listed
    assert handle.pid not in listed and "kworker/u8:2" in table
    assert table.startswith(f"# containment: {engine.containment}")
    engine.stop(handle, attempt)
    finish(engine, attempt, handle)


def test_the_roots_death_takes_every_escapee_with_it(engine: Engine, tmp_path: Path, token: str, pids: Path) -> None:
    release = tmp_path / "release"
    attempt, handle = launch(engine, tmp_path, tree_argv(pids, "--release", str(release), "--stubborn"), token)
    started(pids)
    release.touch()
    record = finish(engine, attempt, handle)
    assert (record.returncode, record.stop_requested) == (0, False)
    assert survivors(pids) == []
    assert record.lingering_workers >= EXPECTED - 1, "every process but the root outlived it and was killed"


def test_orphaned_escapees_whose_parents_are_gone(engine: Engine, tmp_path: Path, token: str, pids: Path) -> None:
    attempt, handle = launch(engine, tmp_path, tree_argv(pids, "--orphan"), token)
    wait_for(lambda: len(recorded(pids)) >= EXPECTED + 1, 20, "the escapees")
    engine.stop(handle, attempt)
    finish(engine, attempt, handle)
    assert survivors(pids) == []


def test_a_lost_shims_run_is_killed_whole_by_the_daemon_path(
    engine: Engine, tmp_path: Path, token: str, pids: Path
) -> None:
    """The shim is SIGKILLed (OOM killer, a person): its orphans go to PID 1 with nobody to
    reap them, and the daemon's kill path finds them by the cgroup, or by group, session,
    ancestry and MKD_RUN_ID."""
    attempt, handle = launch(engine, tmp_path, tree_argv(pids, "--stubborn"), token)
    started(pids)
    os.kill(handle.pid, signal.SIGKILL)
    record = finish(engine, attempt, handle)
    assert record.lost
    wait_for(lambda: len(recorded(pids)) >= EXPECTED + 4, 10, "the forker's children")
    alive = survivors(pids)
    assert len(alive) >= EXPECTED + 4, "nothing died with the shim"
    killed = engine.kill_orphaned_group(attempt)
    assert killed >= len(alive)
    wait_for(lambda: survivors(pids) == [], 5, "every process of the run to be gone")
    child = engine.child(attempt)
    assert child is not None and child.containment == engine.containment
    if child.cgroup:
        assert not os.path.exists(child.cgroup), "the run's cgroup is removed"


def test_stop_with_the_shim_gone_signals_every_process_of_the_run(
    engine: Engine, tmp_path: Path, token: str, pids: Path
) -> None:
    attempt, handle = launch(engine, tmp_path, tree_argv(pids), token)
    started(pids)
    os.kill(handle.pid, signal.SIGKILL)
    wait_for(lambda: not engine.shim_alive(handle), 10, "the shim to be gone")
    engine.stop(handle, attempt)  # SIGTERM, from the daemon itself: the tree does not ignore it
    try:
        wait_for(lambda: survivors(pids) == [], 10, "every process of the run to act on its SIGTERM")
    except AssertionError:
        raise AssertionError([read_stat(p) for p in survivors(pids)]) from None
    assert engine.poll(attempt, handle) == ExitRecord(None, None, False, 0, None, lost=True)
    assert engine.kill_orphaned_group(attempt) == 0  # what the daemon does next: nothing left, cgroup removed
    child = engine.child(attempt)
    assert child is not None and not (child.cgroup and os.path.exists(child.cgroup))


@pytest.mark.skipif("cgroup" not in MECHANISMS, reason="no writable cgroup v2 tree here")
def test_cgroup_holds_the_run_and_not_its_shim(tmp_path: Path, token: str, pids: Path) -> None:
    engine = Engine(containment="cgroup")
    attempt, handle = launch(engine, tmp_path, tree_argv(pids), token)
    before = started(pids)
    child = engine.child(attempt)
    assert child is not None and child.cgroup and child.run_id
    inside = set(cgroup.procs(child.cgroup))
    assert set(before) <= inside, "every process of the run"
    wait_for(lambda: inside <= set(recorded(pids)), 5, "nothing in the cgroup but the run (the forker forks on)")
    assert handle.pid not in cgroup.procs(child.cgroup)
    engine.stop(handle, attempt)
    finish(engine, attempt, handle)
    assert not os.path.exists(child.cgroup), "removed once empty"
    engine.close()


@pytest.mark.skipif("cgroup" not in MECHANISMS, reason="no writable cgroup v2 tree here")
def test_a_shim_the_daemon_did_not_move_moves_itself(
    tmp_path: Path, token: str, pids: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "_move_into_new_cgroup", lambda pid, path: None)
    engine = Engine(containment="cgroup")
    attempt, handle = launch(engine, tmp_path, tree_argv(pids), token)
    before = started(pids)
    child = engine.child(attempt)
    assert child is not None and child.containment == "cgroup" and child.cgroup
    assert set(before) <= set(cgroup.procs(child.cgroup)) and handle.pid not in cgroup.procs(child.cgroup)
    engine.stop(handle, attempt)
    finish(engine, attempt, handle)
    assert survivors(pids) == [] and not os.path.exists(child.cgroup)
    engine.close()


@pytest.mark.skipif("cgroup" not in MECHANISMS, reason="no writable cgroup v2 tree here")
def test_empty_attempt_cgroups_of_killed_shims_are_swept_and_live_ones_kept(
    tmp_path: Path, token: str, pids: Path
) -> None:
    engine = Engine(containment="cgroup")
    assert engine.where.parent
    empty = os.path.join(engine.where.parent, f"{cgroup.PREFIX}test-{os.getpid()}")
    os.mkdir(empty)
    attempt, handle = launch(engine, tmp_path, tree_argv(pids), token)
    started(pids)
    child = engine.child(attempt)
    assert child is not None and child.cgroup
    assert cgroup.sweep(engine.where.parent, older_than=3600) == 0 and os.path.isdir(empty), "young: kept"
    cgroup.sweep(engine.where.parent, older_than=0)
    assert not os.path.exists(empty) and os.path.isdir(child.cgroup), "the empty one goes, the live one stays"
    engine.stop(handle, attempt)
    finish(engine, attempt, handle)
    assert survivors(pids) == []
    engine.close()


HOP = """
import os, sys, time
folder, home = sys.argv[1], sys.argv[2]
os.makedirs(folder, exist_ok=True)
if os.fork() == 0:
    os.setsid()
    with open(os.path.join(home, "cgroup.procs"), "w") as procs:
        procs.write(str(os.getpid()))  # out of the run's cgroup, on purpose (as root may)
    raw = open("/proc/self/stat", "rb").read()
    open(os.path.join(folder, str(os.getpid())), "w").write(raw[raw.rfind(b")") + 2 :].split()[19].decode())
    time.sleep(600)
time.sleep(600)
"""


@pytest.mark.skipif("cgroup" not in MECHANISMS, reason="no writable cgroup v2 tree here")
def test_a_process_that_leaves_the_cgroup_still_dies_as_the_shims_descendant(
    tmp_path: Path, token: str, pids: Path
) -> None:
    engine = Engine(containment="cgroup")
    assert engine.where.parent
    attempt, handle = launch(engine, tmp_path, [sys.executable, "-c", HOP, str(pids), engine.where.parent], token)
    (hopper,) = wait_for(lambda: recorded(pids), 20, "the hopper")
    child = engine.child(attempt)
    assert child is not None and child.cgroup and hopper not in cgroup.procs(child.cgroup)
    engine.stop(handle, attempt)
    finish(engine, attempt, handle)
    assert survivors(pids) == []
    engine.close()


# --- the /proc walk as a table ------------------------------------------------------------


def stat(pid: int, ppid: int, pgid: int, sid: int, start: int = 100, state: str = "S") -> ProcStat:
    return ProcStat(pid=pid, state=state, ppid=ppid, pgid=pgid, sid=sid, start_ticks=start, comm="x")


def test_run_members_follows_children_groups_and_sessions_but_not_reused_pids() -> None:
    table = [
        stat(1, 0, 1, 1, start=1),
        stat(10, 1, 10, 10),  # the run's root (its shim is gone)
        stat(11, 10, 10, 10),  # a worker
        stat(12, 1, 12, 12),  # setsid + its parent died: reparented to PID 1, found by nothing here
        stat(13, 1, 10, 10),  # an orphan still in the root's group
        stat(14, 1, 14, 10),  # setpgid(0, 0), orphaned: the root's session
        stat(15, 1, 15, 15),  # setsid, orphaned, and its own child below
        stat(16, 15, 15, 15),
        stat(17, 11, 17, 17),  # a worker's setsid child: below a member
        stat(18, 1, 17, 17),  # ...and its orphan, in its session
        stat(19, 11, 19, 19, state="Z"),  # a zombie is nobody's survivor
        stat(20, 1, 20, 20, start=5),  # older than the run: never the run's
        stat(21, 1, 21, 21),  # a stranger
    ]
    found = {s.pid for s in run_members([(10, 100)], groups=[10], since_ticks=100, stats=table)}
    assert found == {10, 11, 13, 14, 17, 18}
    # the root is gone: its group and session (reserved by the kernel while in use) still lead to them
    gone = [s for s in table if s.pid != 10]
    assert {s.pid for s in run_members([(10, 100)], groups=[10], since_ticks=100, stats=gone)} == {11, 13, 14, 17, 18}
    # pid 10 was reused by a stranger: its group and session are not the run's
    reused = [stat(10, 1, 10, 10, start=900), *gone]
    assert run_members([(10, 100)], groups=[10], since_ticks=100, stats=reused) == []


# --- through a real daemon ------------------------------------------------------------------


def job(argv: list[str], stage: str = "") -> str:
    return f"""
[workload]
kind = "command"
argv = {json.dumps(argv)}

[[stages]]
kind = "command"
{stage}

[watch]
stop_grace = "1s"

[retry]
max_attempts = 1
"""


@pytest.fixture(params=MECHANISMS)
def daemon(request: pytest.FixtureRequest, home: Home) -> Home:
    home.env["MKD_CONTAINMENT"] = request.param
    return home


def attempt_dir(home: Home, name: str) -> Path:
    return Path(wait_for(lambda: home.attempts(name), 10, "the attempt")[0]["dir"])


def test_cancel_leaves_no_escapee(daemon: Home, pids: Path) -> None:
    daemon.start()
    daemon.drop("esc.toml", job(tree_argv(pids, "--stubborn")))
    started(pids)
    assert daemon.mkd("cancel", "esc").returncode == 0
    daemon.wait_state("esc", "cancelled", timeout=30)
    assert survivors(pids) == []
    assert containment_of(attempt_dir(daemon, "esc"))[1] == daemon.env["MKD_CONTAINMENT"]
    said = "a cgroup per attempt" if daemon.env["MKD_CONTAINMENT"] == "cgroup" else "/proc walk"
    assert f"process containment: {said}" in daemon.log.read_text(), "the daemon's log says which one"
    daemon.stop()


def test_a_stage_timeout_leaves_no_escapee(daemon: Home, pids: Path) -> None:
    daemon.start()
    daemon.drop("slow.toml", job(tree_argv(pids), 'timeout = "2s"'))
    started(pids)
    daemon.wait_state("slow", "failed", timeout=30)
    assert daemon.attempts("slow")[0]["failure_class"] == "timeout"
    assert survivors(pids) == []
    daemon.stop()


def test_shutdown_stop_runs_leaves_no_escapee(daemon: Home, pids: Path) -> None:
    daemon.start()
    daemon.drop("esc.toml", job(tree_argv(pids, "--stubborn")))
    started(pids)
    assert daemon.mkd("shutdown", "--stop-runs").returncode == 0
    assert daemon.proc is not None
    assert daemon.proc.wait(30) == 0
    assert survivors(pids) == []


def test_root_death_while_the_daemon_is_down_leaves_no_escapee(daemon: Home, pids: Path, tmp_path: Path) -> None:
    release = tmp_path / "release"
    daemon.start()
    daemon.drop("esc.toml", job(tree_argv(pids, "--release", str(release))))
    started(pids)
    folder = attempt_dir(daemon, "esc")
    daemon.kill()
    release.touch()  # the root exits 0 with mkd down: its shim alone must end the escapees
    wait_for((folder / "exit.json").exists, 20, "the shim to record the end")
    assert survivors(pids) == []
    assert json.loads((folder / "exit.json").read_text())["lingering_workers"] >= EXPECTED - 1
    daemon.start()
    daemon.wait_state("esc", "succeeded", timeout=30)
    assert "outlived the root; killed" in daemon.timeline("esc")
    daemon.stop()
