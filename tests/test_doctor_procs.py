"""Which containment a host gives (mkd.cgroup.locate) and what `mkd doctor` says about it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mkd import cgroup
from mkd.engine import Engine

MOUNTINFO = """\
25 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
29 25 0:26 / /sys/fs/cgroup/my\\040tree rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
30 25 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
"""


def test_the_cgroup2_mount_is_read_from_mountinfo(tmp_path: Path) -> None:
    (tmp_path / "mountinfo").write_text(MOUNTINFO)
    assert cgroup.mount_point(str(tmp_path / "mountinfo")) == ("/sys/fs/cgroup/my tree", "/")
    (tmp_path / "v1").write_text(MOUNTINFO.splitlines()[2] + "\n")
    assert cgroup.mount_point(str(tmp_path / "v1")) is None
    assert cgroup.mount_point(str(tmp_path / "absent")) is None


@pytest.mark.parametrize(
    ("own", "mode", "usable", "why"),
    [
        ("/system.slice/mkd.service", "auto", False, "systemd unit's cgroup that is not delegated"),
        ("/system.slice/mkd.service", "cgroup", True, "cgroup v2 under"),  # delegated on systemd < 251: no mark
        ("/user.slice/user-1000.slice/session-4.scope", "auto", False, "not delegated"),
        ("/docker/abc", "auto", True, "cgroup v2 under"),
        ("/", "auto", True, "cgroup v2 under"),
        ("/", "proc", False, "MKD_CONTAINMENT=proc"),
        ("/gone", "auto", False, "is not there"),
    ],
)
def test_where_attempt_cgroups_may_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own: str, mode: str, usable: bool, why: str
) -> None:
    """A tree of plain folders stands in for /sys/fs/cgroup (the decision, not the kernel)."""
    for path in ("system.slice/mkd.service", "user.slice/user-1000.slice/session-4.scope", "docker/abc"):
        (tmp_path / path).mkdir(parents=True)
    monkeypatch.setattr(cgroup, "mount_point", lambda: (str(tmp_path), "/"))
    monkeypatch.setattr(cgroup, "own_cgroup", lambda: own)
    where = cgroup.locate(mode)
    assert (where.parent is not None, why in where.why) == (usable, True), where
    if usable:
        assert where.parent == os.path.normpath(f"{tmp_path}{own}")
        assert not [p for p in Path(where.parent).iterdir() if p.name.startswith(cgroup.PREFIX)], "the probe is gone"
    elif mode == "auto" and "delegated" in why:
        assert "Delegate=yes" in where.fix


def test_mkd_containment_is_read_from_the_environment() -> None:
    assert cgroup.mode_from_env({}) == "auto"
    assert cgroup.mode_from_env({"MKD_CONTAINMENT": " Proc "}) == "proc"
    assert cgroup.mode_from_env({"MKD_CONTAINMENT": "bogus"}) == "auto"


def doctor(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "mkd", "doctor"], capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )
    return done.stdout


def test_doctor_reports_the_mechanism_new_attempts_get() -> None:
    out = doctor({"MKD_CONTAINMENT": "proc"})
    assert "[warn] process containment: /proc walk (no cgroup: MKD_CONTAINMENT=proc" in out
    assert "fix: unset MKD_CONTAINMENT" in out
    here = Engine().containment
    line = next(line for line in doctor({"MKD_CONTAINMENT": "auto"}).splitlines() if "process containment" in line)
    assert ("a cgroup per attempt" in line) == (here == "cgroup"), line
