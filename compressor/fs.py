"""Safe file-system writes (DESIGN §1.4): nothing the user made is ever overwritten or lost.

- `atomic_directory`: build in a hidden sibling, rename into place only when complete; a crash leaves the
  destination as it was. Partials carry the writer's pid, so the next run removes those of dead processes.
- Folders the tool may replace on its own (logit caches, seq-KD corpora, the pass cache) carry an owner marker;
  a folder without our marker is the user's and is never replaced (`UserError`, exit 2).
- Outputs keep the user's umask (mkdtemp creates 0700 folders; a model server under another user must read them).
- `scratch_directory`: per-process scratch under the system temp dir, with stale ones of dead processes removed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from compressor.errors import UserError

MARKER = ".compressor-owner"  # a file we write in every folder we may later replace without asking
PID_TAG = re.compile(r"\.(?:partial|old)-(\d+)-")


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(root: Path) -> None:
    """Give `root` and everything under it the modes a plain mkdir/open would have under the user's umask."""
    mask = current_umask()
    dir_mode, file_mode = 0o777 & ~mask, 0o666 & ~mask
    os.chmod(root, dir_mode)
    for path in root.rglob("*"):
        if path.is_symlink():
            continue
        os.chmod(path, dir_mode if path.is_dir() else file_mode)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_siblings(destination: Path) -> list[Path]:
    """Remove `.NAME.partial-PID-*` / `.NAME.old-PID-*` left beside `destination` by processes that died."""
    removed = []
    if not destination.parent.is_dir():
        return removed
    prefix = f".{destination.name}."
    for sibling in destination.parent.iterdir():
        if not sibling.name.startswith(prefix):
            continue
        match = PID_TAG.match(sibling.name[len(prefix) - 1 :])
        if match and not pid_alive(int(match.group(1))):
            shutil.rmtree(sibling, ignore_errors=True)
            removed.append(sibling)
    return removed


def owner_of(folder: Path) -> str | None:
    marker = folder / MARKER
    try:
        return marker.read_text().strip() if marker.is_file() else None
    except OSError:
        return None


def check_replaceable(folder: Path, owner: str) -> None:
    """A folder the tool is about to replace must be absent or one of ours of the same kind (exit 2 otherwise)."""
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a directory; refusing to replace it with a {owner}")
    found = owner_of(folder)
    if found != owner:
        what = f"a {found}" if found else "not written by Compressor"
        raise UserError(f"{folder}: exists and is {what}; refusing to replace it with a {owner} (choose another path)")


@contextmanager
def atomic_directory(destination: Path, owner: str | None = None) -> Iterator[Path]:
    """Yield an empty hidden sibling of `destination`; on success it replaces `destination` (old one removed).

    With `owner`, an existing `destination` is replaced only if it carries our marker for that owner, and the
    new folder gets the marker. Modes follow the umask, not mkdtemp's 0700.
    """
    destination = Path(destination)
    if owner:
        check_replaceable(destination, owner)
    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(destination)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-{os.getpid()}-", dir=destination.parent))
    try:
        yield tmp
        if owner:
            (tmp / MARKER).write_text(owner + "\n")
        apply_umask(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if destination.exists():
        old = destination.with_name(f".{destination.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        destination.rename(old)
        tmp.rename(destination)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(destination)


def default_cache_root() -> Path:
    """The one cache root: `$COMPRESSOR_CACHE`, else ~/.cache/compressor (pass results, runs, logits, corpora)."""
    return Path(os.environ.get("COMPRESSOR_CACHE", Path.home() / ".cache" / "compressor"))


def write_atomically(path: Path, text: str) -> None:
    """Replace one file's text in a single rename (the old text stays until the new one is complete)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        tmp.write_text(text)
        os.chmod(tmp, 0o666 & ~current_umask())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---- scratch ---------------------------------------------------------------------------------------------
SCRATCH_PREFIX = "compressor-"
SCRATCH_TAG = re.compile(rf"^{SCRATCH_PREFIX}(?:[a-z]+-)?(\d+)-")


def clean_stale_scratch(root: Path | None = None) -> list[Path]:
    """Remove `compressor-[kind-]PID-*` scratch folders of processes that no longer run."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = SCRATCH_TAG.match(entry.name)
        if match and entry.is_dir() and not pid_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


@contextmanager
def scratch_directory(kind: str = "") -> Iterator[Path]:
    """A private scratch folder for one run, removed at the end; a SIGKILLed run's is removed by the next."""
    clean_stale_scratch()
    label = f"{kind}-" if kind else ""
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{label}{os.getpid()}-") as folder:
        yield Path(folder)


# ---- checks made before any work ---------------------------------------------------------------------------
def probe_write(folder: Path) -> OSError | None:
    """Write and remove an empty file in `folder`: the error a real write would meet there, or None."""
    probe = Path(folder) / f".compressor-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return exc
    return None


def check_writable(folder: Path, what: str) -> None:
    """`folder` (created if absent) must be a directory we can write to; checked by writing a probe file."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: {what} exists and is not a directory")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{folder}: {what} is not writable ({exc.strerror or exc})") from None
    problem = probe_write(folder)
    if problem:
        raise UserError(f"{folder}: {what} is not writable ({problem.strerror or problem})")


def nearest_existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_parent(out: Path, what: str = "output directory") -> None:
    """The folder an output will be renamed into must be creatable and writable: say so now, not after the work.

    Probes the nearest existing ancestor with a file it removes at once, so a refused run creates no folder.
    """
    existing = nearest_existing(Path(out).absolute().parent)
    if not existing.is_dir():
        raise UserError(f"{out}: cannot create the {what}: {existing} is not a directory")
    problem = probe_write(existing)
    if problem:
        raise UserError(f"{out}: cannot write the {what} here ({existing} is not writable: {problem.strerror})")


def real(path: Path | str) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def check_disjoint(output: Path | str, inputs: Mapping[str, Path | str | None], what: str = "--out") -> None:
    """Refuse an output that is, contains, or lies inside one of the inputs (teacher, data, recipe, ...)."""
    out = real(output)
    for name, given in inputs.items():
        if not given:
            continue
        source = real(given)
        if out == source or out in source.parents or source in out.parents:
            relation = "is" if out == source else ("contains" if out in source.parents else "lies inside")
            raise UserError(
                f"{what} {output} {relation} the {name} {given}; refusing to write there (choose another output path)"
            )


def free_space(path: Path | str | None) -> str:
    try:
        usage = shutil.disk_usage(nearest_existing(Path(path or ".")))
    except OSError:
        return "unknown"
    return f"{usage.free / 2**20:.1f} MiB"


def is_disk_full(exc: BaseException) -> bool:
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left on device" in str(exc)
