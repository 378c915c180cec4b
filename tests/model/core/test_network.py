import itertools

import numpy as np
import pytest
import torch

from services.model.core.network import MoodreelModel, inputs_from_bundle
from services.model.testing import TINY_SPEC, tiny_model_config, tiny_speech_encoder_config
from shared.contract.bundle import FeatureBundle, UtteranceMeta
from shared.contract.labels import MODALITIES
from tests.model.helpers import random_inputs

ALL_MASKS = [list(combo) for combo in itertools.product([False, True], repeat=3)]


def build(**changes) -> MoodreelModel:
    torch.manual_seed(0)
    return MoodreelModel(tiny_model_config(TINY_SPEC, **changes)).eval()


@pytest.mark.parametrize("mode", ["frozen", "top_layers", "lora", "full"])
def test_text_train_modes_train_exactly_their_parts(mode):
    model = build(text_train_mode=mode, text_train_layers=1).train()
    inputs = random_inputs(TINY_SPEC, [[True, False, False]] * 4)
    output = model(inputs)
    (output.emotion_logits.sum() + output.sentiment_logits.sum()).backward()
    text_grads = {
        name: parameter.grad is not None and bool(parameter.grad.abs().sum() > 0)
        for name, parameter in model.text.backbone.named_parameters()
        if parameter.requires_grad
    }
    if mode == "frozen":
        assert text_grads == {}
    elif mode == "top_layers":
        assert text_grads and all(".layer.1." in name for name in text_grads)
        assert any(text_grads.values())
    elif mode == "lora":
        assert text_grads and all("lora_" in name for name in text_grads)
        # LoRA's B starts at zero, so only B receives a gradient on the first step.
        assert any(text_grads[name] for name in text_grads if "lora_B" in name)
    else:
        assert text_grads["embeddings.word_embeddings.weight"]
    assert model.emotion_head.weight.grad.abs().sum() > 0
    assert model.text.project[1].weight.grad.abs().sum() > 0


def test_cached_frozen_hidden_states_give_the_same_output():
    model = build(text_train_mode="top_layers", text_train_layers=1)
    inputs = random_inputs(TINY_SPEC, [[True, False, False]] * 3)
    hidden = model.text.frozen_hidden(inputs.input_ids, inputs.attention_mask, inputs.token_type_ids)
    with torch.no_grad():
        direct = model(inputs).emotion_logits
        inputs.text_hidden = hidden
        inputs.input_ids = None
        cached = model(inputs).emotion_logits
    torch.testing.assert_close(direct, cached, rtol=1e-4, atol=1e-5)


def test_roberta_style_encoder_without_segment_embeddings():
    config = tiny_model_config(TINY_SPEC).text_encoder_config | {
        "model_type": "roberta",
        "type_vocab_size": 1,
    }
    model = build(text_encoder_config=config)
    output = model(random_inputs(TINY_SPEC, [[True, False, False]] * 2))
    assert torch.isfinite(output.emotion_logits).all()


def test_small_cnn_visual_backbone():
    model = build(visual_backbone="cnn", visual_encoder_config=None, visual_channels=(4, 8))
    output = model(random_inputs(TINY_SPEC, [[False, False, True]] * 2))
    assert output.modalities_used[:, 2].all()
    assert torch.isfinite(output.emotion_logits).all()


@pytest.mark.parametrize(
    "mask", ALL_MASKS, ids=lambda m: "".join("TAV"[i] if m[i] else "-" for i in range(3))
)
def test_every_missing_modality_combination_is_masked(mask):
    model = build()
    inputs = random_inputs(TINY_SPEC, [mask, [True, True, True]], seed=1)
    with torch.no_grad():
        output = model(inputs)
        # Change the content of every modality the first row lacks: its result must not move.
        changed = random_inputs(TINY_SPEC, [mask, [True, True, True]], seed=2)
        for index, present in enumerate(mask):
            if present:
                name = ("input_ids", "log_mel", "frames")[index]
                getattr(changed, name)[0] = getattr(inputs, name)[0]
                if index == 0:
                    changed.attention_mask[0] = inputs.attention_mask[0]
                    changed.token_type_ids[0] = inputs.token_type_ids[0]
                if index == 1:
                    changed.audio_mask[0] = inputs.audio_mask[0]
        again = model(changed)
    assert output.modalities_used[0].tolist() == mask
    assert output.modalities_used[1].all()
    torch.testing.assert_close(output.emotion_logits[0], again.emotion_logits[0])
    torch.testing.assert_close(output.sentiment_logits[0], again.sentiment_logits[0])
    for index, present in enumerate(mask):
        if not present:
            assert not output.modality_emotion_logits[0, index].any()
            assert not output.modality_sentiment_logits[0, index].any()
        else:
            assert output.modality_emotion_logits[0, index].abs().sum() > 0


def test_absent_modality_is_not_the_same_as_zero_features():
    model = build()
    inputs = random_inputs(TINY_SPEC, [[True, True, True], [True, True, False]])
    inputs.frames[0] = 0
    inputs.frames[1] = 0
    with torch.no_grad():
        output = model(inputs)
    assert not torch.allclose(output.emotion_logits[0], output.emotion_logits[1])


def test_untrained_modality_is_never_used():
    model = build(trained_modalities=("text",))
    with torch.no_grad():
        output = model(random_inputs(TINY_SPEC, [[True, True, True], [False, True, True]]))
    assert output.modalities_used.tolist() == [[True, False, False], [False, False, False]]


def test_modality_dropout_hides_modalities_but_never_all_of_a_row():
    model = build(modality_dropout=0.6).train()
    torch.manual_seed(3)
    used = model(random_inputs(TINY_SPEC, [[True, True, True]] * 64)).modalities_used
    assert used.any(-1).all()
    assert (~used).any()
    assert used.sum() > 64


def test_inputs_from_numpy_bundle():
    spec = TINY_SPEC
    count = 2
    rng = np.random.default_rng(0)
    bundle = FeatureBundle(
        utterances=[UtteranceMeta(start=i, end=i + 1.0, text="hi") for i in range(count)],
        frames=rng.integers(
            0, 255, (count, spec.frames_per_utterance, 3, spec.frame_size, spec.frame_size), dtype=np.uint8
        ),
        frame_times=np.zeros((count, spec.frames_per_utterance), dtype=np.float32),
        log_mel=rng.standard_normal((count, spec.n_mels, spec.max_audio_frames)).astype(np.float16),
        audio_mask=np.ones((count, spec.max_audio_frames), dtype=bool),
        input_ids=rng.integers(100, 1000, (count, spec.max_tokens), dtype=np.int64),
        attention_mask=np.ones((count, spec.max_tokens), dtype=np.int64),
        token_type_ids=np.zeros((count, spec.max_tokens), dtype=np.int64),
        modality_mask=np.array([[True, False, True], [True, True, True]]),
        spec_hash=spec.hash,
    )
    restored = FeatureBundle.from_bytes(bundle.to_bytes())
    with torch.no_grad():
        output = build()(inputs_from_bundle(restored))
    assert output.modalities_used.tolist() == [[True, False, True], [True, True, True]]
    assert output.emotion_logits.shape == (2, 7)
    assert len(MODALITIES) == output.modality_emotion_logits.shape[1]


@pytest.mark.parametrize("normalization", ["utterance", "per_bin"])
def test_audio_normalization_removes_the_offset_it_is_meant_to(normalization):
    """Both ignore a level change; per-bin normalisation also ignores a fixed colouring of the
    spectrum (a different offset in every mel bin, like a microphone's), which utterance one keeps."""
    model = build(audio_normalization=normalization)
    inputs = random_inputs(TINY_SPEC, [[False, True, False]] * 2)
    bins = inputs.log_mel.shape[1]
    mask = inputs.audio_mask[:, None, :].float()
    level = torch.full((1, 1, 1), 0.4)
    colouring = torch.linspace(-0.5, 0.7, bins).view(1, bins, 1)
    with torch.no_grad():
        plain, louder, coloured = (
            model.audio((inputs.log_mel.float() + offset) * mask, inputs.audio_mask)
            for offset in (0.0, level, colouring)
        )
    torch.testing.assert_close(plain, louder, rtol=1e-3, atol=1e-4)
    if normalization == "per_bin":
        torch.testing.assert_close(plain, coloured, rtol=1e-3, atol=1e-4)
    else:
        assert not torch.allclose(plain, coloured, rtol=1e-3, atol=1e-4)


def test_audio_convs_per_stage_add_depth_not_shape():
    shallow, deep = build(audio_convs_per_stage=0), build(audio_convs_per_stage=2)
    conv_count = [sum(isinstance(m, torch.nn.Conv2d) for m in b.audio.conv) for b in (shallow, deep)]
    assert conv_count[1] == 3 * conv_count[0]
    inputs = random_inputs(TINY_SPEC, [[False, True, False]] * 3)
    with torch.no_grad():
        assert (
            deep.audio(inputs.log_mel, inputs.audio_mask).shape
            == shallow.audio(inputs.log_mel, inputs.audio_mask).shape
        )


def speech_encoder_model(**changes) -> MoodreelModel:
    return build(
        audio_backbone="transformers", audio_encoder_config=tiny_speech_encoder_config(TINY_SPEC), **changes
    )


def test_speech_encoder_ignores_padding_and_reads_the_speech():
    model = speech_encoder_model()
    inputs = random_inputs(TINY_SPEC, [[False, True, False]] * 2)
    padding = ~inputs.audio_mask[:, None, :]
    with torch.no_grad():
        plain = model(inputs).modality_emotion_logits[:, 1]
        inputs.log_mel = inputs.log_mel.masked_fill(padding, 3.0)  # loud "sound" in the padding
        padded = model(inputs).modality_emotion_logits[:, 1]
        inputs.log_mel = inputs.log_mel.masked_fill(~padding, 0.5)  # the speech itself changed
        changed = model(inputs).modality_emotion_logits[:, 1]
    torch.testing.assert_close(plain, padded)
    assert not torch.allclose(plain, changed)


def test_speech_encoder_trains_or_stays_frozen():
    for train_backbone in (True, False):
        model = speech_encoder_model(audio_train_backbone=train_backbone).train()
        output = model(random_inputs(TINY_SPEC, [[False, True, False]] * 3))
        output.modality_emotion_logits[:, 1].sum().backward()
        grads = [p.grad for p in model.audio.backbone.parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads) == train_backbone
        assert model.audio.project[1].weight.grad.abs().sum() > 0


def test_speech_encoder_refuses_features_with_other_mel_bins():
    model = build(
        audio_backbone="transformers",
        audio_encoder_config=tiny_speech_encoder_config(TINY_SPEC) | {"num_mel_bins": TINY_SPEC.n_mels + 16},
    )
    inputs = random_inputs(TINY_SPEC, [[False, True, False]])
    with pytest.raises(ValueError, match="set the FeatureSpec's n_mels to 80"):
        model(inputs)


def tiny_mpnet_config() -> dict:
    """A random MPNet (all-mpnet-base-v2's architecture) on the MiniLM tokenizer's vocabulary."""
    return {
        "model_type": "mpnet",
        "vocab_size": tiny_model_config(TINY_SPEC).text_encoder_config["vocab_size"],
        "hidden_size": 8,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "intermediate_size": 16,
        "max_position_embeddings": 514,
        "relative_attention_num_buckets": 32,
    }


def test_mpnet_top_layer_on_cached_states_equals_the_whole_encoder():
    # MPNet adds a relative-position bias to every layer's attention; the top layer run alone on
    # cached states must get it as the encoder gives it, or training and serving would differ.
    model = build(text_encoder_config=tiny_mpnet_config(), text_train_mode="top_layers", text_train_layers=1)
    assert not model.text.uses_token_types  # MPNet has no segment embeddings
    inputs = random_inputs(TINY_SPEC, [[True, False, False]] * 3)
    inputs.attention_mask[1, 5:] = 0
    hidden = model.text.frozen_hidden(inputs.input_ids, inputs.attention_mask, inputs.token_type_ids)
    with torch.no_grad():
        direct = model(inputs).emotion_logits
        inputs.text_hidden = hidden
        inputs.input_ids = None
        cached = model(inputs).emotion_logits
    torch.testing.assert_close(direct, cached, rtol=1e-5, atol=1e-6)
    assert model.text.backbone.encoder.relative_attention_bias.weight.abs().sum() > 0


def test_mpnet_trains_only_its_top_layer():
    model = build(text_encoder_config=tiny_mpnet_config(), text_train_mode="top_layers", text_train_layers=1)
    output = model.train()(random_inputs(TINY_SPEC, [[True, False, False]] * 4))
    output.emotion_logits.sum().backward()
    trained = {n for n, p in model.text.backbone.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("encoder.layer.2.") for n in trained)
    assert all(model.text.backbone.get_parameter(n).grad is not None for n in trained)
