"""One run at a time in a results folder: a lock file naming the owning host and process.

The workflow takes RESULTS/.fewcells-run.lock when Snakemake starts a real run (see
workflow/rules/common.smk) and removes it when that process exits. A second run, from this
checkout or another that shares the folder, is refused while the owner lives; a lock whose
process is gone (same host) is taken over with a warning. `fewcells unlock RESULTS` removes
a lock by hand, e.g. one left on another host.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

from fewcells.atomic import TEMPORARY_INFIX, remove_stale_temporaries
from fewcells.errors import FewcellsError

LOCK_NAME = ".fewcells-run.lock"


def lock_path(results: str | os.PathLike) -> Path:
    return Path(results) / LOCK_NAME


def read_owner(results: str | os.PathLike) -> dict | None:
    """The lock's owner (host, pid, started, cwd), or None when the folder is not locked."""
    path = lock_path(results)
    try:
        owner = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise FewcellsError(
            f"run lock {path} is unreadable ({error}); if no run uses {results}, remove it "
            f"with `fewcells unlock {results}`"
        ) from None
    if not isinstance(owner, dict) or not {"host", "pid"} <= set(owner):
        raise FewcellsError(
            f"run lock {path} does not name a host and PID; if no run uses {results}, "
            f"remove it with `fewcells unlock {results}`"
        )
    return owner


def describe(owner: dict) -> str:
    return (
        f"PID {owner['pid']} on {owner['host']} (started {owner.get('started', '?')} "
        f"in {owner.get('cwd', '?')})"
    )


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_state(owner: dict) -> str:
    """'ours' (this process), 'alive', 'dead' (same host, no such process) or 'unknown'
    (another host)."""
    if owner["host"] != socket.gethostname():
        return "unknown"
    if owner["pid"] == os.getpid():
        return "ours"
    return "alive" if _process_alive(int(owner["pid"])) else "dead"


def acquire(results: str | os.PathLike, warn=None) -> None:
    """Take the results folder's lock for this process; FewcellsError names a live owner."""
    warn = warn or (lambda text: print(text, file=sys.stderr))
    results = Path(results)
    path = lock_path(results)
    try:
        results.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FewcellsError(
            f"config key results: cannot create {results}: {error.strerror or error}"
        ) from None
    record = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cwd": str(Path.cwd()),
    }
    for _ in range(5):
        if _create(path, record):
            return
        owner = read_owner(results)
        if owner is None:
            continue  # released meanwhile
        state = owner_state(owner)
        if state == "ours":
            return
        if state != "dead":
            where = "" if state == "alive" else " (on another host, so it cannot be checked)"
            raise FewcellsError(
                f"results folder {results} is in use by another run: {describe(owner)}{where}; "
                f"wait for it to end, or if it has ended, run `fewcells unlock {results}`"
            )
        warn(f"fewcells: taking over the stale run lock {path} of {describe(owner)}")
        _remove_if_owned_by(path, owner)
    raise FewcellsError(f"run lock {path}: could not take it; another run keeps taking it")


def _create(path: Path, record: dict) -> bool:
    """Create the lock file with its content in one step; False if it exists."""
    fd, name = tempfile.mkstemp(prefix=f"{LOCK_NAME}{TEMPORARY_INFIX}", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as stream:
            stream.write(json.dumps(record) + "\n")
        try:
            os.link(name, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(name)


def _remove_if_owned_by(path: Path, owner: dict) -> bool:
    """Remove the lock if it still names `owner` (not a newer one taken meanwhile)."""
    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if (current.get("host"), current.get("pid")) != (owner["host"], owner["pid"]):
        return False
    path.unlink(missing_ok=True)
    return True


def release(results: str | os.PathLike) -> None:
    """Remove the lock if this process holds it."""
    path = lock_path(results)
    _remove_if_owned_by(path, {"host": socket.gethostname(), "pid": os.getpid()})


def unlock(results: str | os.PathLike, *, force: bool = True) -> dict | None:
    """Remove the lock and return its owner (None if there was none). Without `force`, a
    lock whose owner is a live process on this host is kept and FewcellsError raised."""
    owner = read_owner(results) if lock_path(results).exists() else None
    if owner is None:
        lock_path(results).unlink(missing_ok=True)
        return None
    if not force and owner_state(owner) == "alive":
        raise FewcellsError(
            f"results folder {results} is in use by a live run, {describe(owner)}; "
            "not removing its lock"
        )
    lock_path(results).unlink(missing_ok=True)
    return owner


def remove_stale_temporaries_under(results: str | os.PathLike) -> list[Path]:
    """Remove every temporary that a killed run left under `results` (.<name>.tmp-*, see
    fewcells.atomic), with the empty output folder beside it; call it holding the lock."""
    results = Path(results)
    found = []
    for dirpath, dirnames, filenames in os.walk(results):
        for name in dirnames + filenames:
            if name.startswith(".") and TEMPORARY_INFIX in name and not name.startswith(LOCK_NAME):
                found.append(Path(dirpath, name))
        dirnames[:] = [d for d in dirnames if TEMPORARY_INFIX not in d]
    targets = {path.parent / path.name[1:].split(TEMPORARY_INFIX)[0] for path in found}
    for target in sorted(targets):
        remove_stale_temporaries(target)
    return sorted(found)
