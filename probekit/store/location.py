"""Where a results store lives: a local path, or an fsspec URL (``memory://``, ``s3://bucket/run.zarr``).

``file://`` URLs are local paths. Anything else with a ``scheme://`` goes
through fsspec: the store is built locally, following the same crash-safe
protocol as a local one, and uploaded when the run is complete (see
:func:`upload`).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

from probekit.errors import ProbekitError

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(location: str | Path) -> bool:
    """Whether ``location`` has a ``scheme://`` other than ``file://``."""
    text = str(location)
    return bool(_SCHEME.match(text)) and not text.startswith("file://")


def local_path(location: str | Path) -> Path:
    """A local location as a path (``file://`` stripped; a ``file://`` URL naming another host is refused)."""
    text = str(location)
    if not text.startswith("file://"):
        return Path(text)
    parsed = urlparse(text)
    if parsed.netloc not in ("", "localhost"):
        raise ProbekitError(f"{text} names the host {parsed.netloc!r}; file:// URLs are local (file:///path)")
    return Path(parsed.path)


def check_output_location(location: str | Path) -> str | Path:
    """``location``, unless the results would vanish there: ``memory://`` lives only as long as the CLI's
    process."""
    if str(location).startswith("memory://"):
        raise ProbekitError(f"--out {location} is in this process's memory and would vanish when it exits; "
                            "write to a path or a remote store")
    local_path(location)  # a file:// URL naming another host
    return location


def filesystem(url: str):
    """``(fsspec filesystem, path within it)`` for a URL; a clear error for an unknown or unusable scheme."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise ProbekitError(f"cannot open {url}: {exc}") from None


def exists(location: str | Path) -> bool:
    if not is_url(location):
        return local_path(location).exists()
    fs, path = filesystem(str(location))
    return fs.exists(path)


def remote_root_metadata(url: str) -> bytes | None:
    """The bytes of a remote store's root ``zarr.json``, or None when it has none."""
    fs, path = filesystem(url)
    try:
        return fs.cat_file(f"{path.rstrip('/')}/zarr.json")
    except (FileNotFoundError, OSError):
        return None


def name_of(location: str | Path) -> str:
    """The store's own name: ``s3://b/runs/x.zarr`` -> ``x.zarr``."""
    return Path(urlparse(str(location)).path if is_url(location) else str(location)).name


def upload(local: Path, url: str, replace: bool) -> None:
    """Copy the finished store at ``local`` to ``url``; the root ``zarr.json`` goes last, so a reader never
    sees a complete-looking store that is not. With ``replace``, the copy goes to ``<url>.new`` first and the
    old store is removed only after it has fully arrived."""
    fs, path = filesystem(url)
    target = f"{path}.new" if replace else path
    if fs.exists(target):
        fs.rm(target, recursive=True)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    root = local / "zarr.json"
    for file in [p for p in files if p != root] + [root]:
        destination = f"{target}/{file.relative_to(local).as_posix()}"
        fs.makedirs(destination.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(file), destination)
    if replace:
        fs.rm(path, recursive=True)
        fs.mv(target, path, recursive=True)
