"""Training: ``moodreel train`` and the SageMaker training entry point.

Every TrainConfig field is a ``--field-name`` flag, every ModelConfig field a ``--model-<name>``
flag and every FeatureSpec field a ``--spec-<name>`` flag; ``--preset NAME`` starts from
``presets/NAME.toml`` (flags given beside it win).

SageMaker: hyperparameters arrive as ``--name value`` arguments (framework containers, which run
this file as a script) or in ``/opt/ml/input/config/hyperparameters.json`` (own image); data in
``SM_CHANNEL_TRAIN/DEV/TEST``; the checkpoint goes to ``SM_MODEL_DIR``, reports and TensorBoard to
``SM_OUTPUT_DATA_DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tomllib
from pathlib import Path

from services.model.core.config import ModelConfig
from services.model.training.config import TrainConfig
from services.model.training.loop import train
from shared.contract.features.spec import FeatureSpec

SM_HYPERPARAMETERS = Path("/opt/ml/input/config/hyperparameters.json")

_MODEL_FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig)}
_SPEC_FIELDS = FeatureSpec.model_fields


PRESETS_DIR = Path(__file__).with_name("presets")


def preset_names() -> list[str]:
    """The presets: one TOML file each in ``presets/``."""
    return sorted(path.stem for path in PRESETS_DIR.glob("*.toml"))


def _preset_text(value) -> str:
    """A TOML value as the command line writes it (lists comma-separated, booleans lower case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


def load_preset(name: str) -> dict[str, str]:
    """A preset's settings as ``{"field": "value", "model.field": ..., "spec.field": ...}``."""
    path = PRESETS_DIR / f"{name}.toml"
    if not path.is_file():
        raise ValueError(f"no preset {name!r}; presets are {preset_names()}")
    values: dict[str, str] = {}
    for key, value in tomllib.loads(path.read_text()).items():
        if isinstance(value, dict):  # the [model] and [spec] tables
            values |= {f"{key}.{name}": _preset_text(item) for name, item in value.items()}
        else:
            values[key] = _preset_text(value)
    return values


def _parse_value(text: str, annotation: str):
    if text.lower() in ("none", "null") and "None" in annotation:
        return None
    if annotation.startswith("bool"):
        return text.lower() in ("1", "true", "yes", "on")
    if annotation.startswith("tuple"):
        parts = [part.strip() for part in text.split(",") if part.strip()]
        return tuple(int(part) for part in parts) if annotation.startswith("tuple[int") else tuple(parts)
    if annotation.startswith("int"):
        return int(text)
    if annotation.startswith("float"):
        return float(text)
    if annotation.startswith("Path"):
        return Path(text)
    if annotation.startswith("dict"):
        return json.loads(text)
    return text


def build_parser() -> argparse.ArgumentParser:
    """Every TrainConfig field as ``--field-name``, every ModelConfig field as ``--model-<name>``
    and every FeatureSpec field as ``--spec-<name>`` (values as strings; lists comma-separated)."""
    parser = argparse.ArgumentParser(prog="moodreel train", description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("model", "spec"):
            continue
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=str, default=None)
    for name in _MODEL_FIELDS:
        parser.add_argument(f"--model-{name.replace('_', '-')}", dest=f"model.{name}", type=str, default=None)
    for name in _SPEC_FIELDS:
        parser.add_argument(f"--spec-{name.replace('_', '-')}", dest=f"spec.{name}", type=str, default=None)
    parser.add_argument(
        "--preset", choices=preset_names(), default=None, help=f"a named starting point ({PRESETS_DIR})"
    )
    return parser


def config_from_args(argv: list[str]) -> TrainConfig:
    args = build_parser().parse_args(argv)
    values = {k: v for k, v in vars(args).items() if v is not None and k != "preset"}
    if args.preset:
        values = load_preset(args.preset) | values
    return config_from_strings(values)


def config_from_strings(values: dict[str, str]) -> TrainConfig:
    from shared.settings import get_settings

    train_types = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    model_values, spec_values, train_values = {}, {}, {}
    for key, text in values.items():
        key = key.replace("-", "_")
        if key.startswith("model."):
            name = key.removeprefix("model.")
            model_values[name] = _parse_value(str(text), str(_MODEL_FIELDS[name].type))
        elif key.startswith("spec."):
            spec_values[key.removeprefix("spec.")] = text
        elif key in train_types:
            train_values[key] = _parse_value(str(text), train_types[key])
        else:
            raise ValueError(f"unknown hyperparameter {key!r}")
    config = TrainConfig(
        **train_values,
        model=ModelConfig.given(model_values),
        spec=FeatureSpec.model_validate(spec_values),
    )
    settings = get_settings()
    if config.cache_dir is None:
        config.cache_dir = settings.data_dir / "cache" / "meld"
    return config


def main(argv: list[str] | None = None) -> Path:
    """Entry point for ``moodreel train`` and SageMaker (reads SM_* when present)."""
    from shared.logging import configure_logging

    configure_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv and SM_HYPERPARAMETERS.is_file():
        # Our own image gets hyperparameters as JSON; SageMaker's own keys are not ours.
        for key, value in json.loads(SM_HYPERPARAMETERS.read_text()).items():
            if not key.startswith("sagemaker_"):
                argv += [f"--{key}", str(value)]
    config = config_from_args(argv)
    if "SM_MODEL_DIR" in os.environ:
        output = Path(os.environ.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data"))
        if "--output-dir" not in argv:
            config.output_dir = output
        config.progress = False
        if config.tensorboard_dir is None:
            config.tensorboard_dir = output / "tensorboard"
    checkpoint = train(config)
    model_dir = os.environ.get("SM_MODEL_DIR")
    if model_dir and int(os.environ.get("RANK", "0")) == 0:
        import shutil

        shutil.copytree(checkpoint, model_dir, dirs_exist_ok=True)
    return checkpoint


if __name__ == "__main__":
    main()
