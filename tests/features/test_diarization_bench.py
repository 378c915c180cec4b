"""The diarization bench's scoring and the settings it hands the product.

The error's parts (missed speech, false alarm, speaker confusion) and the boundary counts are
checked on hand-made turns whose answer is known frame by frame; the settings' defaults must be
what the bench chose on its dev mixes, so the product runs what the bench measured.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.diarization import NUISANCE_STORED, RESULTS, Turn, boundary_f1, der, top_directions
from shared.contract.bundle import UtteranceMeta
from shared.contract.features.segmentation import SegmentationParams
from shared.settings import Settings

REFERENCE = [Turn(0.0, 2.0, "A"), Turn(3.0, 5.0, "B")]
# X covers A from 0.5 s (0.5 s missed), Y the first half of B, X again its second half (1 s
# confused: the best mapping is X->A, Y->B), and X speaks 0.5 s in the silence after B.
FOUND = [
    UtteranceMeta(0.5, 2.0, speaker="X"),
    UtteranceMeta(3.0, 4.0, speaker="Y"),
    UtteranceMeta(4.0, 5.0, speaker="X"),
    UtteranceMeta(5.5, 6.0, speaker="X"),
]


def test_the_error_splits_into_missed_false_alarm_and_confusion():
    missed, false_alarm, confusion, speech = der(FOUND, REFERENCE, 6.0, collar=0.0)
    assert (missed, false_alarm, confusion, speech) == (50.0, 50.0, 100.0, 400.0)


def test_the_collar_leaves_frames_near_reference_boundaries_unscored():
    missed, false_alarm, confusion, speech = der(FOUND, REFERENCE, 6.0, collar=0.25)
    # 0.25 s each side of the four reference boundaries is not scored: 0.25 s of speech at each
    assert speech == 400.0 - 4 * 25
    assert missed == 50.0 - 25 and false_alarm == 50.0 and confusion == 100.0 - 25


def test_boundaries_match_one_to_one_within_the_tolerance():
    matched, found, reference = boundary_f1([(u.start, u.end) for u in FOUND], REFERENCE)
    # 2, 3 and 5 s are found; 0 s is 0.5 s off; the two boundaries at 4 s and 5.5/6 s are spurious
    assert (matched, found, reference) == (3, 8, 4)


def test_the_settings_defaults_are_what_the_bench_chose_on_dev():
    results = json.loads(Path(RESULTS).read_text())
    params = SegmentationParams.from_settings(Settings(_env_file=None))
    chosen = results["chosen_on_dev"]
    assert chosen == pytest.approx({name: getattr(params, name) for name in chosen}), (
        "set the settings' segment_* / speaker_* defaults to the bench's dev choice"
    )
    assert results["test_with_settings_defaults"] is None, "the test mixes were scored with other settings"


def test_the_nuisance_directions_are_the_scatters_largest_first():
    rng = np.random.default_rng(0)
    rotation = np.linalg.qr(rng.standard_normal((256, 256)))[0]
    spread = np.linspace(256.0, 1.0, 256)
    values, basis = top_directions(rotation @ np.diag(spread) @ rotation.T)
    assert values == pytest.approx(spread[:NUISANCE_STORED])
    assert np.abs(np.abs(np.sum(basis * rotation[:, :NUISANCE_STORED].T, axis=1)) - 1).max() < 1e-9
