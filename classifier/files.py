"""Files under the allowed folders: paths as text, listing a folder, and opening a file without leaving them.

A folder is checked when a job is submitted and listed later; a worker opens each file later still.
Anything on the way may have been replaced by a symlink in between, so a worker never opens a path
by name: `open_within` walks to the file one component at a time from an allowed folder, follows a
symlink only by resolving it again inside the allowed folders, and never opens anything outside.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MAX_SYMLINKS = 40  # symlinks followed on one path, as in the kernel's own path walk
OUTSIDE = "outside the allowed folders"


class FileRefused(ValueError):
    """A file that may not or cannot be opened; the message says why and names nothing outside the folders."""


# --- paths as text ------------------------------------------------------------------------------------------

# Undecodable bytes and backslashes as escapes: one text per name, never the same text for two names.
_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def path_to_text(path: str | os.PathLike[str]) -> str:
    r"""The text a path is stored and shown as: its bytes read as UTF-8, with `\\` for a backslash and
    `\xNN` (lowercase hex) for each byte that is not UTF-8. A UTF-8 name without a backslash is unchanged.

    text_to_path reverses it exactly, so distinct names (as bytes) always get distinct texts.
    """
    if isinstance(path, str) and path.isascii() and "\\" not in path:
        return path  # the common case, and a listing's hottest call: an ASCII name is its own text
    raw = os.fsencode(path).replace(b"\\", b"\\\\")  # 0x5C never occurs inside a multi-byte UTF-8 sequence
    return raw.decode("utf-8", "backslashreplace")


def paths_to_texts(paths: list[str]) -> list[str]:
    """path_to_text of each path, the common ASCII case without a call per path."""
    return [p if p.isascii() and "\\" not in p else path_to_text(p) for p in paths]


def text_to_path(text: str) -> Path:
    """The path whose text is `text` (see path_to_text); a backslash that starts neither escape is kept."""
    return Path(text_to_fspath(text))


def text_to_fspath(text: str) -> str:
    """text_to_path's path as a str, without building a Path: what a worker opens, once per file."""
    if "\\" not in text:
        return text  # no escape: the common case, and as for path_to_text the hottest
    pieces = _ESCAPE.split(text)  # literal text at even indexes, escapes at odd ones
    raw = b"".join(_unescape(piece) if i % 2 else os.fsencode(piece) for i, piece in enumerate(pieces))
    return os.fsdecode(raw)


def _unescape(escape: str) -> bytes:
    return b"\\" if escape == "\\" else bytes([int(escape[1:], 16)])


def resolve_path(path: Path) -> Path | None:
    """The absolute path with every symlink and ".." resolved, or None for a symlink loop."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # a loop: RuntimeError up to Python 3.12, OSError (ELOOP) later
        return None


def is_within(path: Path, roots: Sequence[Path]) -> bool:
    """True when the resolved `path` is one of the resolved `roots` or lies below one."""
    return any(path.is_relative_to(root) for root in roots)


# --- listing ------------------------------------------------------------------------------------------------

# Why a file under a job's folder was left out of the job (the keys of Skipped.counts).
SKIP_REASONS = {
    "outside_roots": "a symlink that leads outside the allowed folders",
    "symlink_loop": "a symlink loop",
    "not_regular_file": "not a regular file (a folder, pipe, socket or device named like an image)",
    "symlinked_folder": "a symlinked folder (not followed; its images are listed where they lie)",
    "extension_not_allowed": "not an image extension (" + " ".join(sorted(IMAGE_SUFFIXES)) + ")",
    "unreadable_folder": "a folder that could not be listed",
}
SKIP_EXAMPLES = 5  # paths kept of each reason


@dataclass
class Skipped:
    """Files left out of a listing: a count per reason (SKIP_REASONS) and the first few paths (as text) of each."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, path: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < SKIP_EXAMPLES:
            examples.append(path_to_text(path))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def listing_roots(folder: Path, allowed_roots: Sequence[Path] | None) -> list[Path]:
    """Where a listing's symlinked files may lead: the allowed roots, or anywhere (None: development mode)."""
    return [Path(folder.anchor)] if allowed_roots is None else list(allowed_roots)


def iter_image_files(
    folder: Path, within: Sequence[Path] | None = None, skipped: Skipped | None = None
) -> Iterator[Path]:
    """The paths of iter_image_paths, as Path objects."""
    return map(Path, iter_image_paths(folder, within, skipped))


def iter_image_paths(
    folder: Path, within: Sequence[Path] | None = None, skipped: Skipped | None = None
) -> Iterator[str]:
    """Yield image files under `folder`, recursively, depth first in name order, without following symlinked folders.

    A symlinked file is yielded only when its target lies inside one of `within` (default: `folder`
    itself). Everything else that is not an image file is left out and, when `skipped` is given,
    counted there with its reason (SKIP_REASONS). The order is the same on every listing of an
    unchanged folder. Only one folder's names are held at a time, as plain strings.
    """
    for paths in iter_image_folders(folder, within, skipped):
        yield from paths


def iter_image_folders(
    folder: Path, within: Sequence[Path] | None = None, skipped: Skipped | None = None
) -> Iterator[list[str]]:
    """The paths of iter_image_paths, in the same order, as one list per folder (a folder without
    image files gives none): a listing's per-file work then runs over lists, not one call per file."""
    roots = [p for p in map(resolve_path, [folder] if within is None else within) if p is not None]
    tally = skipped if skipped is not None else Skipped()
    top = os.fspath(folder)
    pending = [top]
    while pending:
        directory = pending.pop()
        files, subfolders, left_out = _scan(directory, roots, tally, is_top=directory is top)
        for reason, path in sorted(left_out, key=lambda item: item[1]):
            tally.add(reason, path)
        prefix = os.path.join(directory, "")
        if files:
            files.sort()
            yield [prefix + name for name in files]  # strings: a Path per file costs more than the rest of the walk
        pending.extend(os.path.join(directory, name) for name in sorted(subfolders, reverse=True))


def _scan(
    directory: str, roots: Sequence[Path], tally: Skipped, is_top: bool
) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """One folder's image files and sub-folders (names), and what it leaves out (reason, path)."""
    files: list[str] = []
    subfolders: list[str] = []
    left_out: list[tuple[str, str]] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False) and _has_image_suffix(entry.name):
                    files.append(entry.name)  # the common case first: an image file, not a symlink
                elif entry.is_dir(follow_symlinks=False):
                    subfolders.append(entry.name)
                    if _has_image_suffix(entry.name):
                        left_out.append(("not_regular_file", entry.path))
                elif (reason := _skip_reason(entry, entry.path, roots)) is None:
                    files.append(entry.name)
                else:
                    left_out.append((reason, entry.path))
    except OSError:
        if is_top:
            raise
        tally.add("unreadable_folder", directory)
    return files, subfolders, left_out


def _has_image_suffix(name: str) -> bool:
    stem = name.lstrip(".")  # as os.path.splitext: leading dots (".jpg", "..jpg") start no suffix
    dot = stem.rfind(".")
    return dot > 0 and stem[dot:].lower() in IMAGE_SUFFIXES


def _skip_reason(entry: os.DirEntry[str], path: str, roots: Sequence[Path]) -> str | None:
    """Why a folder entry (not a folder itself) is not listed, or None to list it."""
    if entry.is_symlink():
        return _symlink_skip_reason(entry, path, roots)
    if not _has_image_suffix(entry.name):
        return "extension_not_allowed"
    return None if entry.is_file(follow_symlinks=False) else "not_regular_file"


def _symlink_skip_reason(entry: os.DirEntry[str], path: str, roots: Sequence[Path]) -> str | None:
    target = resolve_path(Path(path))
    if target is None:
        return "symlink_loop"
    if not is_within(target, roots):
        return "outside_roots"
    try:
        mode = os.stat(path).st_mode
    except OSError:  # dangling: listed, and its row says the file is not found
        return None if _has_image_suffix(entry.name) else "extension_not_allowed"
    if stat.S_ISDIR(mode):
        return "symlinked_folder"
    if not _has_image_suffix(entry.name):
        return "extension_not_allowed"
    return None if stat.S_ISREG(mode) else "not_regular_file"


# --- opening ------------------------------------------------------------------------------------------------


def open_within(path: str | os.PathLike[str], roots: Sequence[Path]) -> int:
    """Open the regular file `path` for reading, only if it lies inside one of `roots`; return its descriptor.

    `roots` are absolute folders with no symlink on their way (resolve them first). The walk starts
    at the root that `path` lies in and opens one component at a time relative to the folder before,
    with O_NOFOLLOW, so a folder or file replaced by a symlink since it was listed is never followed
    by the kernel. A symlink is resolved here instead: its target is walked the same way, so it is
    followed only while it stays inside the roots. The file is opened O_NONBLOCK (a FIFO would
    otherwise wait for a writer) and must be a regular file. Raises FileRefused saying why.
    """
    walk = _Walk([_components(os.fspath(root)) for root in roots])
    try:
        return walk.open(_components(os.fspath(path)))
    finally:
        walk.close()


def _components(path: str) -> list[str]:
    if not os.path.isabs(path):
        raise FileRefused(f"not an absolute path: {path_to_text(path)}")
    return [part for part in path.split(os.sep) if part not in ("", ".")]


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class _Walk:
    """The state of one open_within: the folders walked so far, and descriptors of those inside a root."""

    def __init__(self, roots: list[list[str]]) -> None:
        self.roots = roots
        self.parts: list[str] = []  # the physical path walked so far
        self.fds: list[int] = []  # one per folder from the root reached down to parts
        self.symlinks = 0

    def open(self, pending_parts: list[str]) -> int:
        pending = list(reversed(pending_parts))  # the next component last
        self._enter_if_at_root()
        while pending:
            part = pending.pop()
            if part == "..":
                self._up()
            elif not self.fds:
                self._descend_outside(part)
            elif (fd := self._open_child(part, last=not pending, pending=pending)) is not None:
                return fd
        raise FileRefused("is a directory, not a file")

    def _up(self) -> None:
        # Above the first root reached there is no root (walking down from "/" reaches the outermost
        # one first), so leaving it leaves every root: only steps towards a root are allowed then.
        if not self.parts:
            return  # "/.." is "/"
        self.parts.pop()
        if self.fds:
            os.close(self.fds.pop())

    def _descend_outside(self, part: str) -> None:
        """One step while no root has been reached: only towards a root, and open the root when it is reached."""
        self.parts.append(part)
        if not self._enter_if_at_root() and not any(root[: len(self.parts)] == self.parts for root in self.roots):
            raise FileRefused(OUTSIDE)

    def _enter_if_at_root(self) -> bool:
        if self.parts not in self.roots:
            return False
        try:
            self.fds.append(os.open(os.sep + os.sep.join(self.parts), _DIR_FLAGS))
        except OSError as exc:
            raise FileRefused(_reason(exc)) from None
        return True

    def _open_child(self, part: str, last: bool, pending: list[str]) -> int | None:
        """Open `part` in the current folder: return a regular file's descriptor, descend into a folder,
        or put a symlink's target in front of `pending` (and return None for both)."""
        try:
            fd = os.open(part, _FILE_FLAGS if last else _DIR_FLAGS, dir_fd=self.fds[-1])
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and self._is_symlink(part):
                self._follow(part, pending)
                return None
            raise FileRefused(_reason(exc)) from None
        if not last:
            self.parts.append(part)
            self.fds.append(fd)
            return None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise FileRefused("is a directory, not a file" if stat.S_ISDIR(mode) else "not a regular file")
        return fd

    def _is_symlink(self, part: str) -> bool:
        try:
            return stat.S_ISLNK(os.stat(part, dir_fd=self.fds[-1], follow_symlinks=False).st_mode)
        except OSError:
            return False

    def _follow(self, part: str, pending: list[str]) -> None:
        self.symlinks += 1
        if self.symlinks > MAX_SYMLINKS:
            raise FileRefused("symlink loop")
        target = os.readlink(part, dir_fd=self.fds[-1])
        if os.path.isabs(target):
            self.close()
            self.parts = []
            self._enter_if_at_root()
        pending.extend(reversed([p for p in target.split(os.sep) if p not in ("", ".")]))

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def _reason(exc: OSError) -> str:
    reasons = {
        errno.ENOENT: "file not found",
        errno.ENOTDIR: "file not found (a folder on its path is not a folder)",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENAMETOOLONG: "file name too long",
        errno.ELOOP: "symlink loop",
    }
    return reasons.get(exc.errno or 0, f"cannot open: {exc.strerror}")
