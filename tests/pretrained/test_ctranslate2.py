"""The CTranslate2 Whisper converter on a tiny model.bin written here from a random WhisperModel."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperModel

from services.model.pretrained.ctranslate2 import ConversionError, convert_whisper, read_model_bin

TINY = dict(
    d_model=16,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=32,
    decoder_ffn_dim=32,
    num_mel_bins=8,
    vocab_size=60,
    max_source_positions=20,
    max_target_positions=12,
)
SPECIAL = dict(pad_token_id=0, bos_token_id=0, eos_token_id=0, decoder_start_token_id=1)
CODES = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("float16"): 4}


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_model_bin(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str]) -> None:
    """CTranslate2's layout as documented: version, spec name, revision, variables, aliases."""
    out = struct.pack("<I", 6) + _string("WhisperSpec") + struct.pack("<I", 3)
    out += struct.pack("<I", len(variables))
    for name, array in variables.items():
        array = np.array(array, order="C")  # ascontiguousarray would make a scalar 1-d
        out += _string(name) + struct.pack("<B", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
        data = array.tobytes()
        out += struct.pack("<B", CODES[array.dtype]) + struct.pack("<I", len(data)) + data
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases.items():
        out += _string(alias) + _string(target)
    path.write_bytes(out)


def ct2_variables(model: WhisperModel, dtype=np.float32) -> dict[str, np.ndarray]:
    """A WhisperModel's weights in CTranslate2's names, attention fused as CTranslate2 stores it."""
    s = {k: v.detach().numpy().astype(dtype) for k, v in model.state_dict().items()}
    v: dict[str, np.ndarray] = {}

    def linear(ct2, hf):
        v[f"{ct2}/weight"], v[f"{ct2}/bias"] = s[f"{hf}.weight"], s[f"{hf}.bias"]

    def norm(ct2, hf):
        v[f"{ct2}/gamma"], v[f"{ct2}/beta"] = s[f"{hf}.weight"], s[f"{hf}.bias"]

    def fused(ct2, hf, roles):
        v[f"{ct2}/weight"] = np.concatenate([s[f"{hf}.{r}_proj.weight"] for r in roles])
        biases = [
            s.get(f"{hf}.{r}_proj.bias", np.zeros(s[f"{hf}.{r}_proj.weight"].shape[0], dtype)) for r in roles
        ]
        v[f"{ct2}/bias"] = np.concatenate(biases)

    for side in ("encoder", "decoder"):
        layers = model.config.encoder_layers if side == "encoder" else model.config.decoder_layers
        for i in range(layers):
            ct2, hf = f"{side}/layer_{i}", f"{side}.layers.{i}"
            norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
            fused(f"{ct2}/self_attention/linear_0", f"{hf}.self_attn", "qkv")
            linear(f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
            if side == "decoder":
                norm(f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
                linear(f"{ct2}/attention/linear_0", f"{hf}.encoder_attn.q_proj")
                fused(f"{ct2}/attention/linear_1", f"{hf}.encoder_attn", "kv")
                linear(f"{ct2}/attention/linear_2", f"{hf}.encoder_attn.out_proj")
            norm(f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")
            linear(f"{ct2}/ffn/linear_0", f"{hf}.fc1")
            linear(f"{ct2}/ffn/linear_1", f"{hf}.fc2")
        norm(f"{side}/layer_norm", f"{side}.layer_norm")
        v[f"{side}/position_encodings/encodings"] = s[f"{side}.embed_positions.weight"]
        v[f"{side}/num_heads"] = np.array(2, dtype=np.int16)
    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", f"encoder.{conv}")
    v["decoder/embeddings/weight"] = s["decoder.embed_tokens.weight"]
    v["decoder/activation"] = np.array(3, dtype=np.int8)
    return v


@pytest.fixture
def reference() -> WhisperModel:
    torch.manual_seed(0)
    model = WhisperModel(WhisperConfig(**TINY, **SPECIAL)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_()  # non-zero biases: a swapped Q/K/V split would show
    return model


def test_round_trip_gives_the_same_weights_and_outputs(tmp_path, reference):
    write_model_bin(
        tmp_path / "model.bin",
        ct2_variables(reference),
        {"decoder/projection/weight": "decoder/embeddings/weight"},
    )
    converted_dir = convert_whisper(tmp_path / "model.bin", tmp_path / "out", SPECIAL)
    converted = WhisperModel.from_pretrained(converted_dir, local_files_only=True).eval()

    assert converted.config.num_mel_bins == 8 and converted.config.encoder_layers == 2
    expected = reference.state_dict()
    for name, tensor in converted.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    features = torch.randn(2, 8, 40)
    decoder_ids = torch.tensor([[1, 5, 7], [2, 3, 4]])
    with torch.no_grad():
        want = reference(input_features=features, decoder_input_ids=decoder_ids).last_hidden_state
        got = converted(input_features=features, decoder_input_ids=decoder_ids).last_hidden_state
    assert torch.equal(want, got)


def test_float16_source_is_read_exactly(tmp_path, reference):
    variables = ct2_variables(reference, np.float16)
    write_model_bin(tmp_path / "model.bin", variables, {})
    parsed = read_model_bin(tmp_path / "model.bin")
    assert parsed.spec_name == "WhisperSpec" and parsed.revision == 3
    for name, array in variables.items():
        assert np.array_equal(parsed.variables[name], array), name
    converted = WhisperModel.from_pretrained(
        convert_whisper(tmp_path / "model.bin", tmp_path / "out", SPECIAL)
    )
    q = reference.encoder.layers[1].self_attn.q_proj.weight.detach().half().float()
    assert torch.equal(converted.encoder.layers[1].self_attn.q_proj.weight.detach().float(), q)


def test_a_key_bias_that_is_not_zero_is_refused(tmp_path, reference):
    variables = ct2_variables(reference)
    bias = variables["encoder/layer_0/self_attention/linear_0/bias"]
    bias[16:32] = 0.5  # the K third of the fused Q, K, V bias
    write_model_bin(tmp_path / "model.bin", variables, {})
    with pytest.raises(ConversionError, match="key bias is not zero"):
        convert_whisper(tmp_path / "model.bin", tmp_path / "out", SPECIAL)


def test_truncated_or_foreign_files_are_refused(tmp_path, reference):
    write_model_bin(tmp_path / "model.bin", ct2_variables(reference), {})
    data = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="ends early"):
        read_model_bin(tmp_path / "cut.bin")
    variables = ct2_variables(reference)
    del variables["encoder/layer_1/ffn/linear_1/bias"]
    write_model_bin(tmp_path / "partial.bin", variables, {})
    with pytest.raises(ConversionError, match="lacks the Whisper variable"):
        convert_whisper(tmp_path / "partial.bin", tmp_path / "out", SPECIAL)
