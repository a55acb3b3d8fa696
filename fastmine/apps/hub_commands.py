"""`fastmine models`, `fastmine cache` and `fastmine download`: the catalogue of named models
and fastmine's download cache (:mod:`fastmine.hub`). Nothing here imports torch."""
from __future__ import annotations

from .. import hub


def models(args):
    rows = [(e["name"], e["family"], str(e.get("resolution") or ""), " ".join(e.get("latents") or []),
             _size(e.get("size")), e["license"], e["source"]) for e in hub.catalogue().values()
            if args.all or e["kind"] == "models"]
    _table(("name", "family", "px", "latents", "size", "licence", "published at"), rows)
    print(f"\nuse a name wherever a path goes (source.generator=NAME); files are cached in {hub.cache_dir()}")


def cache(args):
    for name in args.remove or []:
        print("\n".join(f"removed {p}" for p in hub.remove(name)))
    if args.clear:
        print(f"removed {len(hub.clear())} files from {hub.cache_dir()}")
    if args.remove or args.clear:
        return
    files = hub.cached()
    _table(("name", "size", "file"), [(name or "", _size(size), str(path)) for path, size, name in files])
    print(f"{len(files)} files, {_size(sum(size for _, size, _ in files))} in {hub.cache_dir()}")


def download(args):
    for source in args.sources:
        print(f"{source}: {hub.fetch(source, cache=args.to)}")
    if args.to:
        print(f"use it with FASTMINE_CACHE={args.to} (and FASTMINE_OFFLINE=1 where there is no internet)")


def _size(n) -> str:
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def _table(header, rows):
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    for r in (header, *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
