"""Files from and to disk, safely.

Writing: every output goes to a temporary name in the target folder and is renamed into place, so a run killed at
any moment leaves either the old file or the new one, never half of one; no output may be an input. Reading: only
regular files (a FIFO or device would block or never end); zip members in bounded chunks, never more than they
declare. Pickles: safe_pickle.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, BinaryIO

from errors import OutputError, ToolError
from limits import Limit, MiB, format_bytes

ZIP_CHUNK_BYTES = 1 * MiB


@contextmanager
def atomic_paths(*targets: str | Path) -> Iterator[list[Path]]:
    """Yield temporary paths beside `targets`; on success rename each onto its target, on failure remove them.

    An OSError on the way (read-only or missing folder, full disk, file-size limit) becomes an OutputError
    naming the targets, which keep their previous content.
    """
    paths = [Path(t) for t in targets]
    # The suffix is kept last, for writers that choose the format by it (Keras's model.save).
    temporaries = [t.with_name(f".{t.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{t.suffix}") for t in paths]
    try:
        for target in paths:
            target.parent.mkdir(parents=True, exist_ok=True)
        yield temporaries
        for target in paths:  # all or none: a rename that must fail must not follow one that succeeded
            if target.is_dir():
                raise IsADirectoryError(errno.EISDIR, "a folder has that name", str(target))
        for temporary, target in zip(temporaries, paths):
            os.replace(temporary, target)
    except OSError as exc:
        raise OutputError(
            f"{', '.join(map(str, paths))}: cannot be written ({exc.strerror or exc}); "
            "any previous version is left unchanged."
        ) from exc
    finally:
        for temporary in temporaries:
            with suppress(OSError):  # e.g. a folder that could not be created
                temporary.unlink(missing_ok=True)


def real_path(path: str | Path) -> Path:
    """`path` absolute with links resolved, as far as they resolve: never raises (Path.resolve raises
    RuntimeError on a link loop), so a hostile link is reported by whatever opens the path next."""
    return Path(os.path.realpath(path))


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    return (
        "a folder"
        if stat.S_ISDIR(mode)
        else "a FIFO (named pipe)"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a symbolic link"
        if stat.S_ISLNK(mode)
        else "a device"
    )


def open_lock_file(path: str | Path) -> IO[str]:
    """Open (creating) the lock file `path` for flock. Never blocks and never follows a link: a FIFO planted at
    the path would otherwise hang open() until someone writes to it, and a link would make us create a file
    elsewhere. OSError when `path` is not (or cannot be) a regular file."""
    with suppress(FileNotFoundError):
        mode = os.lstat(path).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"it is {file_kind(mode)}, not a regular file")
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        descriptor = os.open(path, flags, 0o644)
    except OSError as exc:  # replaced by a link or FIFO since the check
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            raise OSError(exc.errno, "it is not a regular file") from None
        raise
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        raise OSError(errno.EINVAL, f"it is {file_kind(mode)}, not a regular file")
    return os.fdopen(descriptor, "a")


def regular_file_size(path: str | Path, error: type[ToolError], what: str = "file") -> int:
    """The size of `path`, which must be a regular file; `error` naming it otherwise (no such file, a folder, a
    FIFO, socket or device). Checked before opening: opening a FIFO blocks until someone writes to it."""
    path = Path(path)
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: cannot be read: there is no such file.") from None
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    if not stat.S_ISREG(status.st_mode):
        raise error(
            f"{path}: cannot be read: it is {file_kind(status.st_mode)}, not a regular {what} (it is never opened: reading "
            "it could block)."
        )
    return status.st_size


def file_sha256(path: str | Path, error: type[ToolError]) -> str:
    """The sha256 of a regular file, read in blocks (a FIFO or device is refused with `error`, never opened)."""
    regular_file_size(path, error)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    return digest.hexdigest()


def read_zip_member(
    archive: zipfile.ZipFile, member: str | zipfile.ZipInfo, limit: Limit, subject: str, error: type[ToolError]
) -> bytes:
    """A zip member's bytes, inflated ZIP_CHUNK_BYTES at a time and counted as they come, against the size its
    header declares and against `limit`: a member that declares 19 kB can inflate to gigabytes, and reading it
    whole asks zlib for up to 2 GB in one call. Stops at the first byte past either; a member that holds more or
    less than it declares, is damaged, encrypted or compressed in an unsupported way is an `error` naming
    `subject` (e.g. "<file>: member config.json of the Keras archive")."""
    info = member if isinstance(member, zipfile.ZipInfo) else archive.getinfo(member)
    limit.check(info.file_size, subject, error, "bytes")
    allowed = min(info.file_size, limit.value)
    chunks: list[bytes] = []
    count = 0
    try:
        with archive.open(info) as handle:
            while chunk := handle.read(ZIP_CHUNK_BYTES):
                count += len(chunk)
                if count > allowed:
                    raise error(
                        f"{subject}: inflates to more than the {format_bytes(allowed)} it may hold (it "
                        f"declares {format_bytes(info.file_size)}, {limit.what}); it is forged or damaged. "
                        "Reading stopped there."
                    )
                chunks.append(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError) as exc:
        kind = "zlib.error" if isinstance(exc, zlib.error) else type(exc).__name__
        raise error(
            f"{subject} cannot be read ({kind}: {exc}); it is damaged, or inflates to more or less than "
            f"the {format_bytes(info.file_size)} it declares."
        ) from exc
    if count != info.file_size:
        raise error(
            f"{subject}: holds {format_bytes(count)}, not the {format_bytes(info.file_size)} it declares; it "
            "is damaged."
        )
    return b"".join(chunks)


def outputs_apart_from_inputs(outputs: list[Path], inputs: Sequence[str | Path | None], error: type[ToolError]) -> None:
    """No output may be an input (or the same file under another name), nor two outputs one file: writing it
    would destroy what is being read. The message names the first input (the file being processed)."""
    subject = next((Path(p) for p in inputs if p is not None), outputs[0])

    def same(a: Path, b: Path) -> bool:
        try:
            return real_path(a) == real_path(b) or (a.exists() and b.exists() and os.path.samefile(a, b))
        except OSError:
            return False

    for i, output in enumerate(outputs):
        for source in [p for p in inputs if p is not None]:
            if same(output, Path(source)):
                raise error(
                    f"{subject}: its output {output} would overwrite the input {source}; give another "
                    "output path. Nothing was written."
                )
        for other in outputs[i + 1 :]:
            if same(output, other):
                raise error(
                    f"{subject}: two of its outputs would be one file ({output}, {other}); give another "
                    "output path. Nothing was written."
                )


def write_atomically(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write` with an in-memory binary handle, then store its bytes atomically at `path`.

    Buffering first keeps disk errors out of serializers that report them badly (torch.save raises a bare
    RuntimeError on a full disk); here they are plain OSErrors, turned into OutputError by atomic_paths.
    """
    buffer = io.BytesIO()
    write(buffer)
    with atomic_paths(path) as (temporary,):
        temporary.write_bytes(buffer.getbuffer())


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomically(path, lambda handle: handle.write(text.encode()))
