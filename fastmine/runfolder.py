"""A run folder (``out_dir/name``) and what fastmine may do to it.

fastmine touches a folder only when it made it: its ``config.yaml`` carries fastmine's mark
(:data:`fastmine.config.RUN_MARK`). ``--resume`` and ``--restart`` refuse any other non-empty
folder, naming what is in it; a restart removes only the names in :data:`OWN_NAMES` (what a
run writes) and leaves anything else there. Every check here reads; nothing is written
until all of them passed (:func:`check`), and then one writer at a time (:class:`RunLock`).
The folder's own entries are never followed when they are symbolic links: a link is refused.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
from pathlib import Path

import torch

from .config import has_run_mark

# every name a run (and `fastmine eval` on it) writes into its folder: what --restart removes
OWN_NAMES = ("config.yaml", "config_history.jsonl", "metrics.jsonl", "checkpoints", "samples", "trackers",
             "model.safetensors", "selector.json", "s3_masks.json", "inverted_latents.safetensors", "report.md",
             "eval.json", "pictures", "fid_over_steps.png", "demo_result.json", ".lock")
# fastmine's own temporary files (a write killed before its rename: `.NAME.tmp-PID`), by folder
_TEMPS = {"": re.compile(r"\.(" + "|".join(re.escape(n) for n in OWN_NAMES) + r")\.tmp-\d+"),
          "checkpoints": re.compile(r"\.(ckpt-\d+\.safetensors|ckpt-\d+\.state\.pt|latest\.json)\.tmp-\d+")}


class RunFolderError(ValueError):
    """A run folder fastmine will not touch. The message names the Python keywords
    (``resume=True``); :meth:`for_cli` the command-line flags (``--resume``)."""

    def __init__(self, template: str):
        self.template = template
        super().__init__(template.format(resume="resume=True", restart="restart=True", name="run_dir=..."))

    def for_cli(self) -> str:
        return self.template.format(resume="--resume", restart="--restart", name="name=...")


class RunFolderExists(RunFolderError):
    """The folder holds a run and neither resume nor restart was asked for."""


class RunFolderBusy(RuntimeError):
    pass


def _listing(folder: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() and not p.is_symlink() else "") for p in folder.iterdir())
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def check(run_dir, resume: bool, restart: bool):
    """Refuse (one line, nothing written) what a run may not do with ``run_dir``: write into an
    existing folder without resume / restart, resume where there is no run, or resume / restart
    a folder fastmine did not make or whose own entries are symbolic links."""
    run_dir = Path(run_dir)
    where = str(run_dir)
    if resume and restart:
        raise RunFolderError("choose {resume} (continue the run) or {restart} (replace it), not both")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"run folder {where!r} is a file; choose another name ({{name}})")
    existing = run_dir.is_dir() and any(run_dir.iterdir())
    if not existing:
        if resume:
            raise RunFolderError(f"{{resume}}: there is no run in {where!r} to continue")
        return
    if not has_run_mark(run_dir / "config.yaml"):
        what = "continue" if resume else "replace" if restart else "write into"
        raise RunFolderError(f"{where!r} is not a fastmine run folder (no config.yaml written by fastmine); it holds "
                             f"{_listing(run_dir)}; fastmine will not {what} it: choose another name ({{name}}) "
                             "— nothing was changed")
    links = [name for name in OWN_NAMES if (run_dir / name).is_symlink()]
    if links:
        raise RunFolderError(f"run folder {where!r} has symbolic links where fastmine writes its own files "
                             f"({', '.join(links)}); fastmine does not follow them: remove the links — nothing was "
                             "changed")
    if not (resume or restart):
        raise RunFolderExists(f"run folder {where!r} already exists; pass {{resume}} to continue it, {{restart}} to "
                              "replace it, or choose another name ({name}) — nothing was changed")


def stored_global_batch(run_dir) -> int | None:
    """The global batch the run's newest readable checkpoint trained with (None: no checkpoint),
    read before anything is written so that a resume that would change it changes nothing."""
    folder = Path(run_dir) / "checkpoints"
    for path in sorted(folder.glob("ckpt-*.state.pt"), reverse=True):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # damaged: the trainer falls back past it and says so
            continue
        if isinstance(state, dict) and isinstance(state.get("global_batch"), int):
            return state["global_batch"]
    return None


def global_batch_problem(stored: int | None, batch_size: int, world: int) -> str | None:
    """Why a resume may not go on with ``batch_size`` per process on ``world`` processes (the
    global batch must stay what the run ``stored``), or None."""
    if stored is None or stored == batch_size * world:
        return None
    return (f"the run trained with a global batch of {stored} (train.batch_size × processes), this resume would use "
            f"{batch_size * world}: with {world} process(es) set train.batch_size={stored // world} — nothing was "
            "changed")


def clear_run(folder):
    """Delete what a run wrote in ``folder`` (:data:`OWN_NAMES`, temporaries), nothing else; the
    lock stays (it is held)."""
    folder = Path(folder)
    for name in OWN_NAMES:
        p = folder / name
        if name == ".lock" or not (p.exists() or p.is_symlink()):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    remove_stale_temps(folder)


def remove_stale_temps(folder) -> list:
    """Delete the temporary files of fastmine's writes that were killed before their rename, in
    the run folder and its checkpoints (call only while holding the folder's :class:`RunLock`:
    then no live writer owns one). Other files, whatever their names, are left alone."""
    removed = []
    for sub, temp in _TEMPS.items():
        d = Path(folder) / sub
        if not d.is_dir() or d.is_symlink():
            continue
        for p in d.iterdir():
            if temp.fullmatch(p.name) and p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


class RunLock:
    """One writer per run folder: an advisory lock on ``FOLDER/.lock`` (holding the writer's
    pid) for the life of the run. The kernel drops it when the process dies, however it dies.
    The file is opened without following a symbolic link (a link there is refused)."""

    def __init__(self, folder):
        self.path = Path(folder) / ".lock"
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as e:
            if self.path.is_symlink():
                raise RunFolderError(f"run folder {str(Path(folder))!r} has a symbolic link as its .lock; fastmine "
                                     "does not follow it: remove the link — nothing was changed") from None
            raise e
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self.fd, 32).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise RunFolderBusy(f"run folder {str(Path(folder))!r} is in use by process {holder} (it holds "
                                f"{self.path.name}); wait for it to finish or stop it first") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())

    def release(self):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
