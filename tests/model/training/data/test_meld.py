import pytest
import torch

from services.model.training.data import meld
from services.model.training.data.meld import (
    MeldError,
    clip_examples,
    parse_meld_time,
    read_split,
    text_examples,
)
from shared.contract.features.spec import FeatureSpec
from shared.contract.features.text import load_tokenizer
from shared.contract.labels import EMOTIONS
from shared.settings import get_settings
from tests.model.conftest import _row, write_split


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:16:16,059", 976.059), ("0:12:32,632", 752.632), ("00:06:47,28", 407.28), ("1:00:00,5", 3600.5)],
)
def test_meld_times_treat_the_digits_after_the_comma_as_a_fraction(text, seconds):
    assert parse_meld_time(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["16:16,059", "00:16:16.059", "", "aa:bb:cc,ddd"])
def test_malformed_meld_times_are_refused(text):
    with pytest.raises(MeldError):
        parse_meld_time(text)


def test_rows_are_keyed_by_dialogue_and_utterance_and_ordered(tmp_path):
    rows = [_row(1, 4, 2, "joy"), _row(1, 4, 0, "anger"), _row(2, 4, 0, "joy"), _row(3, 2, 5, "joy")]
    write_split(tmp_path, "dev", rows)
    data = read_split(tmp_path, "dev")
    assert [u.key for u in data.utterances] == [(2, 5), (4, 0), (4, 2)]
    assert data.report["duplicate_key"] == 1  # (4, 0) twice: the first row wins
    assert data.utterances[1].emotion == EMOTIONS.index("anger")
    assert [[u.utterance_id for u in d] for d in data.dialogues()] == [[5], [0, 2]]


def test_real_meld_label_files_parse_completely():
    settings = get_settings()
    if not (settings.meld_dir / "dev_sent_emo.csv").is_file():
        pytest.skip("MELD_DIR has no label files")
    counts = {
        split: len(read_split(settings.meld_dir, split).utterances) for split in ("train", "dev", "test")
    }
    assert counts == {"train": 9989, "dev": 1109, "test": 2610}


def test_text_examples_carry_dialogue_context(mini_meld):
    spec = FeatureSpec(context_turns=1, max_tokens=48)
    examples = text_examples(read_split(mini_meld, "dev"), spec)
    assert len(examples) == 4
    assert examples.modality_mask[:, 0].all() and not examples.modality_mask[:, 1:].any()
    assert (examples.tensors["token_type_ids"].sum(1) > 0).all()  # every row has a neighbour
    decoded = load_tokenizer(spec.tokenizer).decode(examples.tensors["input_ids"][1])
    assert "ross :" in decoded  # the previous turn, with its speaker


def test_clip_cache_runs_each_clip_once_and_counts_bad_clips(mini_meld, spec, tmp_path, monkeypatch):
    examples, report = clip_examples(mini_meld, "train", spec, tmp_path, shard_size=3)
    assert report == {"ok": 6, "absent": 1, "corrupt": 1}
    mask = examples.modality_mask
    assert mask[:, 0].all()
    # Row order is dialogue order: dia1 utt0..3, dia2 utt0..2, dia125 utt3; Sr No. 2 = dia1 utt2.
    assert mask[:, 1].tolist() == [True, True, False, True, True, True, True, False]
    assert mask[:, 2].tolist() == mask[:, 1].tolist()
    assert examples.tensors["frames"].shape == (
        8,
        spec.frames_per_utterance,
        3,
        spec.frame_size,
        spec.frame_size,
    )
    red = examples.tensors["frames"][0].float().mean((0, 2, 3))
    assert red[0] > 150 and red[2] < 100  # RGB order: the red clip is red
    assert not examples.tensors["frames"][2].any()
    assert len(list((tmp_path / spec.hash).glob("train-clips-*.safetensors"))) == 3

    def never(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(meld, "_clip_features", never)
    again, report_again = clip_examples(mini_meld, "train", spec, tmp_path, shard_size=3)
    assert report_again == report
    assert torch.equal(again.tensors["log_mel"], examples.tensors["log_mel"])


def test_test_split_finds_prefixed_clips(mini_meld, spec, tmp_path):
    examples, report = clip_examples(mini_meld, "test", spec, tmp_path)
    assert report == {"ok": 4}
    assert examples.modality_mask.all()
