import subprocess

import pytest

from shared.contract.features.media import MEDIA_ERROR_CODES, MediaError, probe


@pytest.mark.parametrize(
    ("case", "container", "video_codec", "audio_codec"),
    [
        ("mp4", "mov,mp4,m4a,3gp,3g2,mj2", "h264", "aac"),
        ("webm", "matroska,webm", "vp9", "opus"),
        ("mkv", "matroska,webm", "h264", "vorbis"),
    ],
)
def test_probe_reads_streams(media, settings, case, container, video_codec, audio_codec):
    info = probe(getattr(media, case), settings)
    assert info.container == container
    assert info.duration == pytest.approx(3.0, abs=0.05)
    assert info.size_bytes == getattr(media, case).stat().st_size
    assert (info.video.width, info.video.height, info.video.rotation) == (320, 240, 0)
    assert info.video.fps == pytest.approx(25.0)
    assert info.video.codec == video_codec
    assert info.audio.codec == audio_codec and info.audio.channels == 1 and info.audio.sample_rate > 0
    assert info.to_dict()["video"]["width"] == 320


def test_probe_rotation_and_display_size(media, settings):
    info = probe(media.portrait, settings)
    assert info.video.rotation in (90, 270)
    assert info.video.display_size == (240, 320)


def test_probe_vfr_reports_average_rate(media, settings):
    info = probe(media.vfr, settings)
    assert 15 < info.video.fps < 25  # 6 of every 10 frames of a 30 fps source


def test_probe_single_stream_files(media, settings):
    assert probe(media.no_audio, settings).audio is None
    audio_only = probe(media.audio_only, settings)
    assert audio_only.video is None and audio_only.audio.codec == "aac"


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("empty", "not_media"),
        ("random", "not_media"),
        ("truncated_no_index", "corrupt"),
        ("subtitles_only", "no_streams"),
    ],
)
def test_probe_refuses_with_stable_codes(media, settings, case, code):
    with pytest.raises(MediaError) as info:
        probe(getattr(media, case), settings)
    assert info.value.code == code


def test_text_and_still_image_are_refused(tmp_path, settings):
    text = tmp_path / "notes.mp4"
    text.write_text("just some words, not a video\n" * 20)
    with pytest.raises(MediaError) as info:
        probe(text, settings)
    assert info.value.code == "not_media"
    image = tmp_path / "still.png"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-nostdin",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=s=64x64",
            "-frames:v",
            "1",
            str(image),
        ],
        check=True,
    )
    with pytest.raises(MediaError) as info:
        probe(image, settings)
    assert info.value.code == "unsupported"


def test_missing_file_is_not_media(tmp_path, settings):
    with pytest.raises(MediaError) as info:
        probe(tmp_path / "absent.mp4", settings)
    assert info.value.code == "not_media"


def test_limits_come_from_settings(media, settings, monkeypatch):
    calls = []
    real_run = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a) or real_run(*a, **k))
    with pytest.raises(MediaError) as info:
        probe(media.mp4, settings.model_copy(update={"max_media_bytes": 1000}))
    assert info.value.code == "too_large"
    assert calls == []  # refused on size alone, before ffprobe starts

    with pytest.raises(MediaError) as info:
        probe(media.mp4, settings.model_copy(update={"max_media_seconds": 2.0}))
    assert info.value.code == "too_long" and "2 s" in str(info.value)

    narrow = settings.model_copy(update={"max_video_long_side": 300})
    with pytest.raises(MediaError) as info:
        probe(media.mp4, narrow)
    assert info.value.code == "too_large_resolution"
    # Portrait and landscape are judged alike: 240x320 portrait passes a 320x240 limit.
    limit = settings.model_copy(update={"max_video_long_side": 320, "max_video_short_side": 240})
    assert probe(media.portrait, limit).video.display_size == (240, 320)


def test_unknown_code_is_a_programming_error():
    with pytest.raises(ValueError):
        MediaError("oops", "no such code")
    assert {"not_media", "no_streams", "corrupt", "too_long", "too_large_resolution", "unsupported"} <= (
        MEDIA_ERROR_CODES
    )


def test_playlists_and_odd_names_are_not_followed(tmp_path, media, settings):
    """An HLS playlist named .mp4 must not make ffprobe open the files or URLs it lists."""
    playlist = tmp_path / "playlist.mp4"
    playlist.write_text(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:3\n#EXTINF:3,\n{media.mp4}\n#EXT-X-ENDLIST\n", encoding="utf-8"
    )
    with pytest.raises(MediaError) as info:
        probe(playlist, settings)
    assert info.value.code == "not_media"
    # a name that looks like an option or a protocol is still just a file
    odd = tmp_path / "-concat:x|y.mp4"
    odd.write_bytes(media.mp4.read_bytes())
    assert probe(odd, settings).video.codec == "h264"
