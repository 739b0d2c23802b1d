"""Which files the readers read: one folder walk shared by validation, the FACECOM and
identity-folder readers and `common.predict`, so all of them see the same files and report the
same ones as skipped.

- An image is any file with an extension Pillow has a decoder for (`IMAGE_EXTENSIONS`): PGM /
  PPM, TIFF, WebP, ... as well as JPEG and PNG, because the decoder, not a list kept here,
  decides what is readable (minus the few formats it only identifies).
- Symbolic links to files and folders are followed, so a data set assembled from links reads
  like a copy; each link is listed with its target, a broken link or a link back to a folder
  being walked (a loop) is reported instead of read.
- Hidden files and folders (names starting with ``.``: ``.DS_Store``, ``.ipynb_checkpoints``)
  are never read and are listed as skipped, never dropped silently.
- Linux file names are bytes; one that is not valid UTF-8 arrives as a ``str`` with surrogate
  escapes, which cannot be printed, hashed as UTF-8 or written to a CSV. `printable` spells
  such a name with ``\\x`` escapes for reports.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

__all__ = ["IMAGE_EXTENSIONS", "HIDDEN_REASON", "Walk", "is_hidden", "is_image_name",
           "is_valid_name", "printable", "walk_files", "count_extensions"]

HIDDEN_REASON = "hidden {kind} (name starts with '.'), skipped"  # kind: "file" or "folder"


# Formats Pillow identifies but cannot decode by itself: stubs waiting for an external
# handler (BUFR, GRIB, HDF5), MPEG (headers only) and WMF / EMF (Windows only). Their files
# are data, not images, so they are reported as "not an image file", not as corrupt images.
_IDENTIFIED_ONLY = ("BUFR", "GRIB", "HDF5", "MPEG", "WMF")


def _pillow_extensions() -> tuple[str, ...]:
    """Lower-case extensions of every format Pillow can open and decode in this installation."""
    Image.init()
    return tuple(sorted(ext.lower() for ext, fmt in Image.registered_extensions().items()
                        if fmt in Image.OPEN and fmt not in _IDENTIFIED_ONLY))


IMAGE_EXTENSIONS = _pillow_extensions()
_IMAGE_EXTENSION_SET = frozenset(IMAGE_EXTENSIONS)  # looked up once per file listed


def is_hidden(name: str) -> bool:
    """True for ``.name`` files and folders, which no reader reads."""
    return name.startswith(".")


def is_image_name(name: str) -> bool:
    """A visible file name whose extension Pillow reads (case-insensitive)."""
    dot = name.rfind(".")  # os.path.splitext's extension of a visible name, without the call
    return dot > 0 and not is_hidden(name) and name[dot:].lower() in _IMAGE_EXTENSION_SET


def is_valid_name(path: str | os.PathLike) -> bool:
    """False when the path holds bytes that are not UTF-8 (surrogate escapes in the str)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(path: str | os.PathLike) -> str:
    """The path as valid UTF-8 text: undecodable bytes become ``\\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


@dataclass
class Walk:
    """What `walk_files` found under one folder, each list in walk order (depth first, names
    sorted within each folder), so the same tree always lists the same way.

    Attributes:
        files: regular files to read (through links), hidden ones excluded.
        skipped: ``(path, reason)`` for hidden files and folders.
        links: ``(path, target)`` for every symbolic link followed.
        broken: ``(path, reason)`` for broken links, link loops (not followed) and folders
            that cannot be listed.
    """

    files: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)
    broken: list[tuple[str, str]] = field(default_factory=list)


def walk_files(folder: str | os.PathLike) -> Walk:
    """Every file under ``folder``, following symbolic links, with what was not read and why.

    Paths keep the link names (``<folder>/<link>/<file>``), as the readers list them.

    Raises:
        NotADirectoryError: ``folder`` is not a folder.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{folder} is not a folder; pass the folder that holds the "
                                 "images.")
    walk = Walk()
    _walk(folder, {os.path.realpath(folder)}, walk)
    return walk


def _walk(folder: str, ancestors: set[str], walk: Walk) -> None:
    try:
        with os.scandir(folder) as entries:
            ordered = sorted(entries, key=lambda e: os.fsencode(e.name))
    except OSError as error:  # e.g. no read permission: reported, the rest is still walked
        walk.broken.append((folder, f"cannot list folder ({error.strerror or error})"))
        return
    for entry in ordered:
        if is_hidden(entry.name):
            kind = "folder" if entry.is_dir() else "file"
            walk.skipped.append((entry.path, HIDDEN_REASON.format(kind=kind)))
            continue
        target = os.path.realpath(entry.path) if entry.is_symlink() else None
        if target is not None and not os.path.exists(entry.path):
            walk.broken.append((entry.path, f"broken symbolic link to {os.readlink(entry.path)}"
                                " (nothing to read; remove it or fix its target)"))
            continue
        if entry.is_dir():
            real = target or os.path.realpath(entry.path)
            if real in ancestors:
                walk.broken.append((entry.path, f"symbolic link loop to {real} (not followed)"))
                continue
            if target is not None:
                walk.links.append((entry.path, target))
            _walk(entry.path, ancestors | {real}, walk)
        elif entry.is_file():
            if target is not None:
                walk.links.append((entry.path, target))
            walk.files.append(entry.path)


def count_extensions(folder: str | os.PathLike, max_depth: int = 3) -> Counter:
    """Visible files per lower-case extension ("" for none) down to ``max_depth`` folder levels:
    what an error about a folder without readable images should name."""
    counts: Counter = Counter()
    root = Path(folder)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        depth = len(Path(dirpath).relative_to(root).parts)
        dirnames[:] = [] if depth >= max_depth else [d for d in dirnames if not is_hidden(d)]
        counts.update(os.path.splitext(n)[1].lower() for n in filenames if not is_hidden(n))
    return counts
