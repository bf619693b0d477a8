"""A results store is untrusted input: what is checked before zarr or xarray decodes any of it.

* **Files** (local stores): every entry under the store is a folder or a regular file; a symbolic link (to
  ``/dev/zero``, to a secret outside), a FIFO or a device is refused, so nothing reads forever or outside.
* **Metadata**: every ``zarr.json`` (the root's consolidated copy included) is JSON of bounded size; zarr
  format 2 metadata is refused (its ``compressor`` may name ``pickle``), and every codec named anywhere must
  be in :data:`ALLOWED_CODECS`, whatever the installed zarr and numcodecs would accept.
* **Manifest keys** (root attr ``manifests``): node names as :func:`~probekit.store.names.check_node_name`
  accepts, file keys as plain relative paths (no ``..``, no absolute path), sizes and CRCs as integers.
* **Root checksum**: a finished store's root ``zarr.json`` carries ``probekit_root_checksum``, the CRC-32 of
  the document without that attribute (canonical JSON); the node manifests cover every other file.
"""

from __future__ import annotations

import json
import os
import re
import stat
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

from probekit.errors import ProbekitError, quoted
from probekit.store.names import check_node_name

# zarr 3 codecs that only reorder, compress, checksum or encode strings: none can run code when decoded
ALLOWED_CODECS = frozenset({"bytes", "zstd", "gzip", "blosc", "crc32c", "transpose", "vlen-utf8", "vlen-bytes",
                            "sharding_indexed"})
ZARR2_FILES = frozenset({".zarray", ".zgroup", ".zattrs", ".zmetadata"})
MAX_METADATA_BYTES = 64 << 20
CHECKSUM_ATTR = "probekit_root_checksum"
MANIFEST_KEY = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")


def local_files(root: Path) -> list[str]:
    """Every file under ``root`` as a relative POSIX path; a link or special file anywhere is an error."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False, onerror=_raise):
        for name in dirs + files:
            path = Path(folder) / name
            mode = os.lstat(path).st_mode
            relative = path.relative_to(root).as_posix()
            if stat.S_ISLNK(mode):
                raise ProbekitError(f"{root} holds a symbolic link ({quoted(relative)}): a store is read only "
                                    "from its own regular files")
            if stat.S_ISREG(mode):
                found.append(relative)
            elif not stat.S_ISDIR(mode):
                raise ProbekitError(f"{root} holds {quoted(relative)}, which is not a regular file or folder")
    return found


def _raise(error: OSError) -> None:
    raise error


def read_local(root: Path, relative: str) -> bytes:
    """A metadata file's bytes, refused beyond :data:`MAX_METADATA_BYTES` (opened without following links)."""
    fd = os.open(root / relative, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_METADATA_BYTES + 1)
    return data


def check_metadata(files: Iterable[str], read: Callable[[str], bytes], where: str) -> dict:
    """Check every metadata file of a store (see the module docstring); return the root document."""
    root = None
    for relative in sorted(files):
        name = relative.rsplit("/", 1)[-1]
        if name in ZARR2_FILES:
            raise ProbekitError(f"{where} holds zarr format 2 metadata ({quoted(relative)}); probekit stores are "
                                "zarr format 3")
        if name != "zarr.json":
            continue
        data = read(relative)
        if len(data) > MAX_METADATA_BYTES:
            raise ProbekitError(f"{where}: {quoted(relative)} is over {MAX_METADATA_BYTES >> 20} MiB of metadata")
        try:
            document = json.loads(data)
        except ValueError:
            raise ProbekitError(f"{where} is not a probekit results store: {quoted(relative)} is not valid JSON "
                                "(damaged or truncated)") from None
        check_codecs(document, f"{where}: {relative}")
        if relative == "zarr.json":
            root = document
    if not isinstance(root, dict):
        raise ProbekitError(f"{where} is not a probekit results store: it has no root zarr.json")
    return root


def check_codecs(document, where: str) -> None:
    """Refuse any codec outside :data:`ALLOWED_CODECS`, any zarr 2 ``compressor``/``filters`` and any storage
    transformer, wherever they sit in ``document`` (nested in sharding or consolidated metadata too)."""
    if isinstance(document, list):
        for item in document:
            check_codecs(item, where)
        return
    if not isinstance(document, dict):
        return
    for key, value in document.items():
        if key in ("compressor", "filters", "storage_transformers") and value not in (None, []):
            raise ProbekitError(f"{where} declares {key} {quoted(json.dumps(value))}, which probekit does not read")
        if key in ("codecs", "index_codecs"):
            for codec in value if isinstance(value, list) else [value]:
                name = codec.get("name") if isinstance(codec, dict) else codec
                if name not in ALLOWED_CODECS:
                    raise ProbekitError(f"{where} uses codec {quoted(name)}; probekit reads only "
                                        f"{', '.join(sorted(ALLOWED_CODECS))}")
        check_codecs(value, where)


def root_checksum(document: dict) -> str:
    """The CRC-32 of a root document without its checksum attribute, as ``crc32:<8 hex digits>``."""
    attrs = {k: v for k, v in (document.get("attributes") or {}).items() if k != CHECKSUM_ATTR}
    canonical = json.dumps({**document, "attributes": attrs}, sort_keys=True, separators=(",", ":"))
    return f"crc32:{zlib.crc32(canonical.encode()):08x}"


def check_root_checksum(document: dict, where: str) -> None:
    """Refuse a root document whose recorded checksum differs (stores without one predate probekit 1.0, or are
    unfinished)."""
    recorded = (document.get("attributes") or {}).get(CHECKSUM_ATTR)
    if recorded is not None and recorded != root_checksum(document):
        raise ProbekitError(f"{where}: the root metadata (zarr.json: status, summaries, manifests) fails its "
                            "checksum; the store is damaged and none of its root values can be trusted")


def check_manifest_keys(manifests, where: str) -> dict[str, dict]:
    """The root attr ``manifests``, parsed and checked: node names, relative file paths, integer records."""
    bad = ProbekitError(f"{where}: its manifest is malformed; the store is damaged")
    if not isinstance(manifests, dict):
        raise bad
    for node, files in manifests.items():
        try:
            check_node_name(node)
        except ProbekitError:
            raise ProbekitError(f"{where}: its manifest names an invalid node {quoted(node)}") from None
        if not isinstance(files, dict):
            raise bad
        for key, record in files.items():
            if not (isinstance(key, str) and MANIFEST_KEY.fullmatch(key)) or ".." in key.split("/") or \
                    "." in key.split("/"):
                raise ProbekitError(f"{where}: its manifest names a file {quoted(key)} that is not a plain path "
                                    "inside the node")
            values = record if isinstance(record, list) else [record]
            if not values or len(values) > 2 or not all(type(v) is int and v >= 0 for v in values):
                raise bad
    return manifests
