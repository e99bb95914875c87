"""The results folder's run lock: one live run at a time, stale locks taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

from fewcells import runlock
from fewcells.cli import main
from fewcells.errors import FewcellsError


def write_lock(results, pid, host=None):
    results.mkdir(parents=True, exist_ok=True)
    record = {"host": host or socket.gethostname(), "pid": pid, "started": "then", "cwd": "/x"}
    runlock.lock_path(results).write_text(json.dumps(record))


@pytest.fixture
def live_pid():
    process = subprocess.Popen(["sleep", "60"])
    yield process.pid
    process.kill()
    process.wait()


def dead_pid():
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_acquire_records_host_and_pid_and_release_removes_it(tmp_path):
    runlock.acquire(tmp_path / "results")
    owner = runlock.read_owner(tmp_path / "results")
    assert owner["host"] == socket.gethostname() and owner["pid"] == os.getpid()
    runlock.acquire(tmp_path / "results")  # the same process again
    runlock.release(tmp_path / "results")
    assert runlock.read_owner(tmp_path / "results") is None
    assert os.listdir(tmp_path / "results") == []


def test_a_live_owner_is_refused_by_name(tmp_path, live_pid):
    write_lock(tmp_path, live_pid)
    with pytest.raises(FewcellsError, match=rf"in use by another run: PID {live_pid} on "):
        runlock.acquire(tmp_path)
    runlock.release(tmp_path)  # not ours: kept
    assert runlock.read_owner(tmp_path)["pid"] == live_pid


def test_an_owner_on_another_host_is_refused(tmp_path):
    write_lock(tmp_path, 1, host="elsewhere.invalid")
    with pytest.raises(FewcellsError, match="on another host"):
        runlock.acquire(tmp_path)


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path):
    pid = dead_pid()
    write_lock(tmp_path, pid)
    warnings = []
    runlock.acquire(tmp_path, warn=warnings.append)
    assert runlock.read_owner(tmp_path)["pid"] == os.getpid()
    assert len(warnings) == 1 and "stale run lock" in warnings[0] and str(pid) in warnings[0]


def test_fewcells_unlock_removes_the_lock_and_stale_temporaries(tmp_path, capsys):
    write_lock(tmp_path, 1, host="elsewhere.invalid")
    (tmp_path / "exp" / "train" / "n6" / ".fold0.tmp-x").mkdir(parents=True)
    (tmp_path / "exp" / "train" / "n6" / "fold0").mkdir()
    assert main(["unlock", str(tmp_path)]) == 0
    assert "removed the run lock of PID 1 on elsewhere.invalid" in capsys.readouterr().err
    assert runlock.read_owner(tmp_path) is None
    assert os.listdir(tmp_path / "exp" / "train" / "n6") == []


def test_an_unreadable_lock_names_the_file(tmp_path):
    runlock.lock_path(tmp_path).write_text("{")
    with pytest.raises(FewcellsError, match=r"\.fewcells-run\.lock is unreadable.*fewcells unlock"):
        runlock.acquire(tmp_path)
