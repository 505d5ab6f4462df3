"""Atomic file writes: a reader sees the old file or the new one, never half of one;
with ``replace=False`` an existing file is never replaced, not even by a
concurrent writer (exactly one of two creates the file, the other gets
FileExistsError)."""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_png", "remove_stale_temporaries"]

# the temporaries of atomic_write: ".<name>.<random>.mrl-partial", a name no user file has by chance,
# so that clearing what an interrupted write left never touches anything else
TEMP_SUFFIX = ".mrl-partial"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, replace: bool = True) -> Path:
    """Call ``write(tmp_path)`` for a temporary file beside ``path``, flush it to
    disk, then rename it over ``path`` (permissions as for a new file under the
    umask, e.g. 0644). ``replace=False``: create ``path`` only if it does not
    exist, atomically (a hard link of the finished temporary, which fails if
    ``path`` exists; where the file system has no hard links, an exclusive
    create of ``path`` claims the name first); FileExistsError naming ``path``
    otherwise. On any error the temporary is removed and ``path`` is left as
    it was; an OSError (a full disk, say) names ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _create(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, FileExistsError):
            raise FileExistsError(f"{path} exists (it is not replaced)") from None
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from exc
        raise
    return path


# what os.link raises where a file system has no hard links (FAT, some network and FUSE mounts)
NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS}


def _create(tmp: str, path: Path) -> None:
    """Move the finished ``tmp`` to ``path`` if ``path`` does not exist (FileExistsError if it does)."""
    try:
        os.link(tmp, path)
    except OSError as exc:
        if exc.errno not in NO_LINKS:
            raise
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # the name is ours from here on
        try:
            os.replace(tmp, path)
        except BaseException:
            os.unlink(path)
            raise
    else:
        os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, replace: bool = True) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), replace=replace)


def atomic_write_text(path: str | os.PathLike, text: str, *, replace: bool = True) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text), replace=replace)


def atomic_write_png(path: str | os.PathLike, figure, dpi: int) -> Path:
    """A matplotlib ``figure`` saved to ``path`` as PNG at ``dpi``, atomically."""
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi))


def atomic_save(path: str | os.PathLike, content, *, force: bool = False) -> Path:
    """``torch.save`` of ``content`` to ``path``, atomically: an existing file
    (or one another writer creates first) is replaced only with ``force``, else
    a FileExistsError names it."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(content, buffer)
    try:
        return atomic_write_bytes(path, buffer.getvalue(), replace=force)
    except FileExistsError:
        raise FileExistsError(f"{path} exists; force=True replaces it") from None


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that an interrupted :func:`atomic_write` left in
    ``folder`` (a process killed mid-write cannot clean up), recognised by
    :data:`TEMP_SUFFIX`, and nothing else; call it only while no other writer
    uses the folder. Returns what was removed."""
    stale = [p for p in Path(folder).glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink()
    return stale
