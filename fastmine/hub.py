"""Files fastmine fetches: the catalogue's named models, URLs given where a path goes, and the
metric networks' weights — downloaded once into a cache, verified, then read as local files.

- The cache is ``$FASTMINE_CACHE`` (default ``~/.cache/fastmine``); a URL's file lives at
  ``CACHE/<host>/<path>``, so a cache folder served over HTTP is itself a mirror.
- :func:`fetch` downloads to ``<file>.part`` (resuming a cut transfer with an HTTP Range
  request), checks the size and sha256 — the catalogue's, else the torch hub hash prefix in the
  file name (``alexnet-owt-7be5be79.pth``), else the one recorded in ``<file>.sha256`` at the
  first download and checked on every later use — and renames the file into place. One
  process downloads (a file lock per file); under torchrun / Accelerate only local rank 0 of a
  node downloads and the other ranks wait for the file.
- ``FASTMINE_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) opens no connection: a cached file is used,
  anything else is a one-line error naming the file and where to put it.
- ``FASTMINE_MIRROR=URL`` fetches the catalogue's files from ``URL/<host>/<path>`` instead of
  their hosts (an institute's mirror; the tests' local server).

A downloaded file is trusted no more than a local one: the loaders read it with the same
restricted readers (:mod:`fastmine.checkpoints`).
"""
from __future__ import annotations

import functools
import hashlib
import http.client
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml
from filelock import FileLock
from tqdm import tqdm

CATALOGUE_FILE = Path(__file__).with_name("catalogue.yaml")
REQUIRED_FIELDS = ("name", "family", "url", "license", "source")
# torch hub's convention (``<name>-<first hex digits of the sha256>.<ext>``), with at least 8
# digits so that an ordinary name such as ``model-abc.pth`` is not taken for a hash
HASH_PREFIX = re.compile(r"-([a-f0-9]{8,})\.")
TRUE = ("1", "true", "yes", "on")
SIDECAR, PART, LOCK = ".sha256", ".part", ".lock"


class DownloadError(OSError):
    """A file could not be fetched or failed its check (one line: what, from where, the fix)."""


# --------------------------------------------------------------------------- settings
def cache_dir(cache=None) -> Path:
    if cache is not None:
        return Path(cache)
    if os.environ.get("FASTMINE_CACHE"):
        return Path(os.environ["FASTMINE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastmine"


def offline_switch() -> str | None:
    """The variable that forbids network access (``FASTMINE_OFFLINE`` or ``HF_HUB_OFFLINE``), if set."""
    for name in ("FASTMINE_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in TRUE:
            return name
    return None


def mirrored(url: str) -> str:
    mirror = os.environ.get("FASTMINE_MIRROR")
    if not mirror:
        return url
    parts = urllib.parse.urlsplit(url)
    return f"{mirror.rstrip('/')}/{parts.netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")


# --------------------------------------------------------------------------- catalogue
@functools.lru_cache(maxsize=None)
def catalogue() -> dict:
    """name -> entry of ``catalogue.yaml`` (its ``models`` and metric ``weights``), each with ``kind``."""
    data = yaml.safe_load(CATALOGUE_FILE.read_text()) or {}
    return {row["name"]: {**row, "kind": kind} for kind in ("models", "weights") for row in data.get(kind) or []}


def is_url(source) -> bool:
    return isinstance(source, str) and source.startswith(("http://", "https://"))


def entry(name_or_url) -> dict | None:
    """The catalogue entry a name (or its published URL) stands for, else None."""
    if not isinstance(name_or_url, str):
        return None
    found = catalogue().get(name_or_url)
    return found or next((e for e in catalogue().values() if e["url"] == name_or_url), None)


def is_remote(source) -> bool:
    """Whether :func:`resolve` would fetch ``source``: a URL, or a catalogue name that is not a local path."""
    return is_url(source) or (isinstance(source, str) and source in catalogue() and not Path(source).exists())


def resolve(source):
    """``source`` as a local path when it is a URL or a catalogue name (fetched once into the
    cache); anything else — a path, a module, a factory name — unchanged. Called wherever a
    path enters fastmine, so a name or URL is accepted wherever a path is."""
    return fetch(source) if is_remote(source) else source


def cache_path(url: str, cache=None) -> Path:
    """Where the file of ``url`` lives in the cache: ``CACHE/<host>/<path>``."""
    parts = urllib.parse.urlsplit(url)
    segments = [parts.netloc.replace(":", "_")] + [s for s in parts.path.split("/") if s]
    if len(segments) < 2 or any(s in (".", "..") or s.endswith((SIDECAR, PART, LOCK)) for s in segments):
        raise ValueError(f"cannot keep {url!r} in the cache: its path does not end in a file name")
    if parts.query:  # two URLs that differ only in their query are two files
        segments[-1] = f"{hashlib.sha256(parts.query.encode()).hexdigest()[:8]}-{segments[-1]}"
    return cache_dir(cache).joinpath(*segments)


# --------------------------------------------------------------------------- fetching
def fetch(name_or_url: str, sha256: str | None = None, size: int | None = None, *, cache=None, progress=True,
          timeout: float = 60.0, attempts: int = 3, wait: float = 3600.0) -> Path:
    """The local path of a catalogue name or a URL, downloaded and verified if it is not cached yet.

    ``sha256`` / ``size``: what the file must be (default: the catalogue's). ``timeout``: seconds
    without data before a server counts as stalled; ``attempts``: tries that resume a cut
    transfer; ``wait``: how long a rank other than local rank 0 waits for the file."""
    found = entry(name_or_url)
    url = found["url"] if found else name_or_url
    if not is_url(url):
        raise ValueError(f"{name_or_url!r} is neither a URL nor a model of fastmine's catalogue (`fastmine models` "
                         "lists them)")
    options = dict(cache=cache, progress=progress, timeout=timeout, attempts=attempts, wait=wait)
    if found and found.get("config"):  # BigGAN: the package's config.json beside its weights
        _fetch(found["config"], found["name"], None, None, True, name_or_url, **options)
    sha256, size = sha256 or (found or {}).get("sha256"), size or (found or {}).get("size")
    return _fetch(url, found["name"] if found else url, sha256, size, bool(found), name_or_url, **options)


def _fetch(url, label, sha256, size, known, asked, cache, progress, timeout, attempts, wait) -> Path:
    """:func:`fetch` of one URL; ``known``: a catalogue file (then FASTMINE_MIRROR applies)."""
    target = cache_path(url, cache)
    if target.is_file():
        return _checked(target, sha256, size, label)
    switch = offline_switch()
    if switch:
        raise FileNotFoundError(
            f"{label} is not in fastmine's cache and {switch}=1 forbids downloading it: put {target.name} at "
            f"{target} (on a machine with internet, `fastmine download {asked} --to DIR` writes it; copy DIR to "
            f"{cache_dir(cache)} or set FASTMINE_CACHE=DIR)")
    if os.environ.get("LOCAL_RANK", "0") != "0":  # torchrun / Accelerate: local rank 0 downloads
        return _wait_for(target, sha256, size, label, wait)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + LOCK):
        if not target.is_file():  # else another process fetched it while this one waited
            _download(mirrored(url) if known else url, target, sha256, size, label, progress, timeout, attempts)
    return _checked(target, sha256, size, label)


def _wait_for(target: Path, sha256, size, label, wait: float) -> Path:
    deadline = time.monotonic() + wait
    while not target.is_file():
        if time.monotonic() > deadline:
            raise DownloadError(f"waited {wait:.0f} s for local rank 0 to download {label} to {target}; it never "
                                "arrived (see rank 0's error)")
        time.sleep(0.5)
    return _checked(target, sha256, size, label)


def _why(reason, timeout) -> str:
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g} s (the server stalled)"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror})"
    return " ".join(str(getattr(reason, "strerror", None) or reason).split())


def _download(url, target: Path, sha256, size, label, progress, timeout, attempts):
    # Our own small HTTP reader rather than torch.hub.download_url_to_file: that one opens the
    # URL without a timeout (a stalled server hangs the run) and cannot resume a cut transfer;
    # huggingface_hub's downloader serves files on its hub only.
    part = target.with_name(target.name + PART)
    for _ in range(attempts):
        have = part.stat().st_size if part.is_file() else 0
        headers = {"User-Agent": "fastmine"} | ({"Range": f"bytes={have}-"} if have else {})
        try:
            response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # the part is longer than the file: start over
                part.unlink()
                continue
            raise DownloadError(f"cannot download {label}: {url} answered HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            why = _why(getattr(e, "reason", e), timeout)
            raise DownloadError(f"cannot download {label} from {url}: {why}") from None
        with response:
            if response.status != 206:
                have = 0  # the server ignored the Range request: the whole file again
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            got = 0
            try:
                with open(part, "ab" if have else "wb") as out, tqdm(
                        total=total, initial=have, unit="B", unit_scale=True, desc=Path(target).name,
                        file=sys.stderr, **({} if progress else {"disable": True})) as bar:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        got += len(chunk)
                        bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                if not got:
                    raise DownloadError(f"cannot download {label} from {url}: {_why(e, timeout)}; run again to "
                                        f"resume ({have} bytes kept in {part})") from None
        if total is None or have + got >= total:
            break
    else:
        raise DownloadError(f"cannot download {label} from {url}: the transfer was cut {attempts} times; run again "
                            f"to resume ({part.stat().st_size} bytes kept in {part})")
    actual = _sha256(part)
    problem = _mismatch(part, actual, sha256, size, target.name)
    if problem:
        part.unlink()
        raise DownloadError(f"downloaded {label} from {url}, but {problem}; nothing was kept — the server sent a "
                            "different file (check the URL)")
    if not (sha256 or HASH_PREFIX.search(target.name)):
        print(f"first download of {label}, sha256 {actual} recorded in {target}{SIDECAR} and checked on every "
              "later use", file=sys.stderr)
    _record(target, actual)
    os.replace(part, target)


def _mismatch(path: Path, actual: str, sha256, size, name) -> str | None:
    if size is not None and path.stat().st_size != int(size):
        return f"it has {path.stat().st_size} bytes where {int(size)} were expected"
    if sha256 and actual != sha256.lower():
        return f"its sha256 is {actual}, not the expected {sha256.lower()}"
    prefix = HASH_PREFIX.search(name)
    if prefix and not actual.startswith(prefix.group(1)):
        return f"its sha256 {actual} does not start with {prefix.group(1)}, the hash prefix its name carries"
    return None


def _record(target: Path, digest: str):
    tmp = target.with_name(f".{target.name}{SIDECAR}.tmp-{os.getpid()}")
    tmp.write_text(f"{digest}  {target.name}\n")  # the format of `sha256sum -c`
    os.replace(tmp, target.with_name(target.name + SIDECAR))


_HASHED: dict = {}  # (path, size, mtime) -> sha256: a file is hashed once per process


def _sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHED:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
        _HASHED[key] = digest.hexdigest()
    return _HASHED[key]


def recorded_sha256(path: Path) -> str | None:
    sidecar = path.with_name(path.name + SIDECAR)
    return sidecar.read_text().split()[0] if sidecar.is_file() else None


def _checked(target: Path, sha256, size, label) -> Path:
    """``target`` after checking it against what it must be and what was recorded at its first download."""
    actual = _sha256(target)
    recorded = recorded_sha256(target)
    problem = _mismatch(target, actual, sha256 or recorded, size, target.name)
    if problem:
        raise DownloadError(f"the cached {label} at {target} changed since it was fetched: {problem}; remove it "
                            f"(`fastmine cache --remove {label}`) to download it again")
    if recorded is None:  # put there by hand (an offline cluster): checked from now on
        print(f"first use of {target}, sha256 {actual} recorded", file=sys.stderr)
        _record(target, actual)
    return target


# --------------------------------------------------------------------------- the cache's contents
def cached(cache=None) -> list:
    """[(path, bytes, catalogue name or None)] of the files in the cache (those with a recorded sha256)."""
    root = cache_dir(cache)
    names = {cache_path(e[key], cache): name for name, e in catalogue().items() for key in ("url", "config")
             if key in e}
    files = sorted(p.with_name(p.name[:-len(SIDECAR)]) for p in root.rglob(f"*{SIDECAR}")) if root.is_dir() else []
    return [(p, p.stat().st_size, names.get(p)) for p in files if p.is_file()]


def remove(name_or_url, cache=None) -> list:
    """Delete a cached file (by catalogue name, URL or path in the cache) with its record; the paths removed."""
    found = entry(name_or_url)
    if found or is_url(name_or_url):
        targets = [cache_path(found["url"] if found else name_or_url, cache)]
        if found and found.get("config"):
            targets.append(cache_path(found["config"], cache))
    else:
        targets = [Path(name_or_url) if Path(name_or_url).is_absolute() else cache_dir(cache) / name_or_url]
    removed = []
    for target in targets:
        for p in (target, *(target.with_name(target.name + s) for s in (SIDECAR, PART, LOCK))):
            if p.is_file():
                p.unlink()
                removed.append(p)
    if not removed:
        raise FileNotFoundError(f"{name_or_url!r} is not in the cache {cache_dir(cache)} (`fastmine cache` lists it)")
    return removed


def clear(cache=None) -> list:
    """Delete every file the cache holds (only fastmine's: files with a recorded sha256, parts, locks)."""
    root = cache_dir(cache)
    removed = [p for f, _, _ in cached(cache) for p in remove(str(f), cache)]
    for leftover in (list(root.rglob(f"*{PART}")) + list(root.rglob(f"*{LOCK}"))) if root.is_dir() else []:
        leftover.unlink()
        removed.append(leftover)
    return removed
