from functools import cached_property
from pathlib import Path

import pytest

from shared.contract.features.voice import VoiceEncoderMissing, voice_encoder
from shared.settings import Settings, models_dir
from tests import mediagen


class MediaSet:
    """Each generated file is made on first use and shared by the whole session."""

    def __init__(self, directory: Path):
        self.directory = directory

    @cached_property
    def mp4(self) -> Path:
        return mediagen.h264_aac_mp4(self.directory)

    @cached_property
    def webm(self) -> Path:
        return mediagen.vp9_opus_webm(self.directory)

    @cached_property
    def mkv(self) -> Path:
        return mediagen.mkv(self.directory)

    @cached_property
    def vfr(self) -> Path:
        return mediagen.vfr_mp4(self.directory)

    @cached_property
    def portrait(self) -> Path:
        return mediagen.rotated_portrait_mp4(self.directory)

    @cached_property
    def no_audio(self) -> Path:
        return mediagen.no_audio_mp4(self.directory)

    @cached_property
    def audio_only(self) -> Path:
        return mediagen.audio_only_m4a(self.directory)

    @cached_property
    def video_ends_early(self) -> Path:
        return mediagen.video_ends_early_mp4(self.directory)

    @cached_property
    def late_audio(self) -> Path:
        return mediagen.late_audio_mp4(self.directory)

    @cached_property
    def truncated(self) -> Path:
        return mediagen.truncated_mp4(self.directory)

    @cached_property
    def truncated_no_index(self) -> Path:
        return mediagen.truncated_mp4(self.directory, name="cut-index.mp4", faststart=False)

    @cached_property
    def time_coded(self) -> Path:
        return mediagen.time_coded_mp4(self.directory)

    @cached_property
    def subtitles_only(self) -> Path:
        return mediagen.subtitles_only_mkv(self.directory)

    @cached_property
    def random(self) -> Path:
        return mediagen.random_bytes(self.directory)

    @cached_property
    def empty(self) -> Path:
        return mediagen.zero_bytes(self.directory)

    @cached_property
    def spoken(self) -> mediagen.SpokenClip:
        return mediagen.spoken_clip(self.directory / "spoken")


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> MediaSet:
    return MediaSet(tmp_path_factory.mktemp("media"))


@pytest.fixture
def settings() -> Settings:
    return Settings(_env_file=None)


@pytest.fixture(scope="module")
def encoder():
    """The installed voice encoder (`make models`); the test is skipped with the reason without it."""
    try:
        return voice_encoder(models_dir(Settings(_env_file=None)))
    except VoiceEncoderMissing as exc:
        pytest.skip(f"{exc}")
