"""CTranslate2 Whisper ``model.bin`` -> a transformers ``WhisperModel`` directory, without ctranslate2.

The file is a header and a list of named tensors (docs/models.md, the layout). Whisper's attention is
stored fused there (Q, K and V stacked on the output axis, the decoder's cross-attention K and V), and
transformers keeps separate projections with no key bias: the converter splits the fused matrices and
refuses a key bias that is not zero, since dropping it would silently change the model.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

# CTranslate2's dtype codes.
DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
}
BFLOAT16 = 5
SUPPORTED_BINARY_VERSIONS = (5, 6)


class ConversionError(ValueError):
    """A model.bin that is not a CTranslate2 Whisper model this converter can translate exactly."""


@dataclass
class CTranslate2Model:
    spec_name: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]


def _read(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ConversionError(f"model.bin ends early (wanted {size} bytes, got {len(data)})")
    return data


def _uint(stream: BinaryIO, fmt: str) -> int:
    return struct.unpack(fmt, _read(stream, struct.calcsize(fmt)))[0]


def _string(stream: BinaryIO) -> str:
    size = _uint(stream, "<H")
    raw = _read(stream, size)
    if not raw.endswith(b"\0"):
        raise ConversionError("a string in model.bin is not NUL-terminated")
    return raw[:-1].decode("utf-8")


def read_model_bin(path: Path) -> CTranslate2Model:
    """Every variable of a CTranslate2 ``model.bin`` as a numpy array (float16/bfloat16 -> float32)."""
    with open(path, "rb") as stream:
        version = _uint(stream, "<I")
        if version not in SUPPORTED_BINARY_VERSIONS:
            raise ConversionError(
                f"model.bin binary version {version} is not one of {SUPPORTED_BINARY_VERSIONS}"
            )
        spec_name = _string(stream)
        revision = _uint(stream, "<I")
        variables: dict[str, np.ndarray] = {}
        for _ in range(_uint(stream, "<I")):
            name = _string(stream)
            rank = _uint(stream, "<B")
            shape = struct.unpack(f"<{rank}I", _read(stream, 4 * rank)) if rank else ()
            code = _uint(stream, "<B")
            size = _uint(stream, "<I")
            raw = _read(stream, size)
            if code == BFLOAT16:
                bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
                array = bits.view(np.float32)
            elif code in DTYPES:
                array = np.frombuffer(raw, dtype=DTYPES[code])
            else:
                raise ConversionError(f"variable {name}: unknown dtype code {code}")
            expected = int(np.prod(shape)) if shape else 1
            if array.size != expected:
                raise ConversionError(f"variable {name}: {array.size} values for shape {shape}")
            variables[name] = array.reshape(shape)
        aliases: dict[str, str] = {}
        rest = stream.read(4)
        if len(rest) == 4:
            for _ in range(struct.unpack("<I", rest)[0]):
                alias = _string(stream)
                aliases[alias] = _string(stream)
    return CTranslate2Model(spec_name=spec_name, revision=revision, variables=variables, aliases=aliases)


def _layer_count(variables: dict[str, np.ndarray], prefix: str) -> int:
    count = 0
    while f"{prefix}/layer_{count}/ffn/linear_0/weight" in variables:
        count += 1
    return count


def _split_fused(
    name: str, weight: np.ndarray, bias: np.ndarray, parts: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    if weight.shape[0] % parts:
        raise ConversionError(f"{name}: {weight.shape[0]} rows do not split into {parts} projections")
    return list(zip(np.split(weight, parts), np.split(bias, parts), strict=True))


def _attention(out: dict, source: dict, ct2: str, hf: str, fused: list[str], key_index: int) -> None:
    """Split a fused projection into ``fused`` (e.g. q, k, v); the key has no bias in transformers."""
    weight, bias = source[f"{ct2}/weight"], source[f"{ct2}/bias"]
    for role, (w, b) in zip(fused, _split_fused(ct2, weight, bias, len(fused)), strict=True):
        out[f"{hf}.{role}_proj.weight"] = w
        if fused.index(role) == key_index:
            if np.abs(b).max(initial=0.0) != 0.0:
                raise ConversionError(f"{ct2}: the key bias is not zero; Whisper's key projection has none")
        else:
            out[f"{hf}.{role}_proj.bias"] = b


def _linear(out: dict, source: dict, ct2: str, hf: str) -> None:
    out[f"{hf}.weight"] = source[f"{ct2}/weight"]
    out[f"{hf}.bias"] = source[f"{ct2}/bias"]


def _norm(out: dict, source: dict, ct2: str, hf: str) -> None:
    out[f"{hf}.weight"] = source[f"{ct2}/gamma"]
    out[f"{hf}.bias"] = source[f"{ct2}/beta"]


def whisper_state_dict(model: CTranslate2Model) -> tuple[dict[str, np.ndarray], dict]:
    """``(state dict in WhisperModel's names, config fields)`` for a CTranslate2 Whisper model."""
    if model.spec_name != "WhisperSpec":
        raise ConversionError(f"model.bin holds a {model.spec_name}, not a WhisperSpec")
    v = dict(model.variables)
    quantised = sorted(k for k in v if k.endswith("weight_scale"))
    if quantised:
        raise ConversionError(f"model.bin is quantised ({quantised[0]}): convert from a float model")
    for alias, target in model.aliases.items():
        v.setdefault(alias, v[target])
    try:
        d_model = v["encoder/position_encodings/encodings"].shape[-1]
        encoder_layers = _layer_count(v, "encoder")
        decoder_layers = _layer_count(v, "decoder")
        out: dict[str, np.ndarray] = {}
        out["encoder.conv1.weight"], out["encoder.conv1.bias"] = (
            v["encoder/conv1/weight"],
            v["encoder/conv1/bias"],
        )
        out["encoder.conv2.weight"], out["encoder.conv2.bias"] = (
            v["encoder/conv2/weight"],
            v["encoder/conv2/bias"],
        )
        out["encoder.embed_positions.weight"] = v["encoder/position_encodings/encodings"].reshape(-1, d_model)
        for i in range(encoder_layers):
            ct2, hf = f"encoder/layer_{i}", f"encoder.layers.{i}"
            _norm(out, v, f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
            _attention(out, v, f"{ct2}/self_attention/linear_0", f"{hf}.self_attn", ["q", "k", "v"], 1)
            _linear(out, v, f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
            _norm(out, v, f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")
            _linear(out, v, f"{ct2}/ffn/linear_0", f"{hf}.fc1")
            _linear(out, v, f"{ct2}/ffn/linear_1", f"{hf}.fc2")
        _norm(out, v, "encoder/layer_norm", "encoder.layer_norm")
        out["decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
        out["decoder.embed_positions.weight"] = v["decoder/position_encodings/encodings"].reshape(-1, d_model)
        for i in range(decoder_layers):
            ct2, hf = f"decoder/layer_{i}", f"decoder.layers.{i}"
            _norm(out, v, f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
            _attention(out, v, f"{ct2}/self_attention/linear_0", f"{hf}.self_attn", ["q", "k", "v"], 1)
            _linear(out, v, f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
            _norm(out, v, f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
            _linear(out, v, f"{ct2}/attention/linear_0", f"{hf}.encoder_attn.q_proj")
            _attention(out, v, f"{ct2}/attention/linear_1", f"{hf}.encoder_attn", ["k", "v"], 0)
            _linear(out, v, f"{ct2}/attention/linear_2", f"{hf}.encoder_attn.out_proj")
            _norm(out, v, f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")
            _linear(out, v, f"{ct2}/ffn/linear_0", f"{hf}.fc1")
            _linear(out, v, f"{ct2}/ffn/linear_1", f"{hf}.fc2")
        _norm(out, v, "decoder/layer_norm", "decoder.layer_norm")
        heads = int(np.asarray(v["encoder/num_heads"]).reshape(-1)[0])
        decoder_heads = int(np.asarray(v.get("decoder/num_heads", v["encoder/num_heads"])).reshape(-1)[0])
    except KeyError as exc:
        raise ConversionError(f"model.bin lacks the Whisper variable {exc.args[0]}") from exc
    config = {
        "d_model": int(d_model),
        "encoder_layers": encoder_layers,
        "decoder_layers": decoder_layers,
        "encoder_attention_heads": heads,
        "decoder_attention_heads": decoder_heads,
        "encoder_ffn_dim": int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "decoder_ffn_dim": int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "num_mel_bins": int(v["encoder/conv1/weight"].shape[1]),
        "vocab_size": int(v["decoder/embeddings/weight"].shape[0]),
        "max_source_positions": int(out["encoder.embed_positions.weight"].shape[0]),
        "max_target_positions": int(out["decoder.embed_positions.weight"].shape[0]),
    }
    return out, config


def convert_whisper(model_bin: Path, output_dir: Path, extra_config: dict | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that ``WhisperModel.from_pretrained`` loads;
    every converted tensor is checked to land on a weight of that model with the same shape."""
    import torch
    from safetensors.torch import save_file
    from transformers import WhisperConfig, WhisperModel

    state, fields = whisper_state_dict(read_model_bin(Path(model_bin)))
    config = WhisperConfig(**fields, **(extra_config or {}))
    with torch.device("meta"):
        expected = {k: tuple(t.shape) for k, t in WhisperModel(config).state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        raise ConversionError(
            f"converted weights do not fit WhisperModel: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shape {wrong[:5]}"
        )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # The source's own precision (float16 for faster-whisper's files): exact, and half the disk.
    tensors = {k: torch.from_numpy(np.array(a)) for k, a in state.items()}
    save_file(tensors, output_dir / "model.safetensors", metadata={"format": "pt"})
    document = config.to_dict()
    document["architectures"] = ["WhisperModel"]
    (output_dir / "config.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return output_dir
