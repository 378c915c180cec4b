import csv
import json

import pytest

from shared.contract.bundle import UtteranceMeta
from shared.contract.features.transcripts import (
    TranscriptError,
    parse_timestamp,
    parse_transcript,
    window_utterances,
)

SRT = """1
00:00:00,500 --> 00:00:02,000
Hello there.

2
00:00:02,250 --> 00:00:04,000
<i>How are</i> you
doing &amp; all?

3
00:00:04,000 --> 00:00:05,000

"""

VTT = """WEBVTT - a header line

NOTE this is a comment
spanning lines

intro
00:00.500 --> 00:02.000 align:start position:10%
<v Ross>We were on a break!</v>

00:00:02.100 --> 00:00:03.000
<v.loud Rachel Green>No, <b>we</b> weren't.
"""


def test_parse_srt(settings):
    result = parse_transcript(SRT, 10.0, settings)
    assert result.utterances == [
        UtteranceMeta(0.5, 2.0, "Hello there.", None),
        UtteranceMeta(2.25, 4.0, "How are you doing & all?", None),
        UtteranceMeta(4.0, 5.0, "", None),  # an empty cue stays, as an audio/visual-only utterance
    ]
    assert result.clamped == []


def test_parse_srt_bytes_with_bom_and_crlf(settings):
    data = ("\ufeff" + SRT).replace("\n", "\r\n").encode("utf-8")
    assert len(parse_transcript(data, None, settings).utterances) == 3


def test_parse_webvtt_with_voices(settings):
    result = parse_transcript(VTT, 10.0, settings)
    assert result.utterances == [
        UtteranceMeta(0.5, 2.0, "We were on a break!", "Ross"),
        UtteranceMeta(2.1, 3.0, "No, we weren't.", "Rachel Green"),
    ]


def test_parse_json_segments_all_forms(settings):
    segments = [
        {"start": 0, "end": 1.5, "text": "one", "speaker": "Joey"},
        {"start": "0:00:01,600", "end": "00:00:02,28", "text": "two"},
        {"start": "2.5", "end": 3, "text": ""},
    ]
    expected = [
        UtteranceMeta(0.0, 1.5, "one", "Joey"),
        UtteranceMeta(1.6, 2.28, "two", None),
        UtteranceMeta(2.5, 3.0, "", None),
    ]
    assert parse_transcript(segments, 5.0, settings).utterances == expected
    assert parse_transcript(json.dumps(segments), 5.0, settings).utterances == expected
    assert parse_transcript(json.dumps({"segments": segments}).encode(), 5.0, settings).utterances == expected


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("00:16:16,059", 976.059),
        ("0:12:32,632", 752.632),  # MELD: one-digit hour
        ("00:06:47,28", 407.28),  # MELD: two digits after the comma are a fraction
        ("00:00:01.5", 1.5),
        ("01:02.250", 62.25),  # WebVTT without hours
        ("1:00:00,000", 3600.0),
        ("00:00:07", 7.0),
    ],
)
def test_parse_timestamp(text, seconds):
    assert parse_timestamp(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "12", "00:61:00,000", "aa:bb:cc", "00:00:1O,000", "-0:00:01,000"])
def test_bad_timestamps(text):
    with pytest.raises(ValueError):
        parse_timestamp(text)


@pytest.mark.parametrize(
    ("source", "line", "fragment"),
    [
        ("1\n00:00:01,000 -> 00:00:02,000\nhi\n", 2, "time range"),
        ("1\n00:00:01,000 --> 00:00:0x,000\nhi\n", 2, "timestamp"),
        ("1\n00:00:01,000 --> 00:00:02,000\nok\n\nhello\n", 5, "cue number"),
        ("1\n00:00:03,000 --> 00:00:02,000\nbackwards\n", 2, "not after start"),
        ("1\n00:00:01,000 --> 00:00:01,000\nzero\n", 2, "not after start"),
        ("1\n00:00:05,000 --> 00:00:06,000\na\n\n2\n00:00:01,000 --> 00:00:02,000\nb\n", 6, "time order"),
        ("1\n00:00:30,000 --> 00:00:31,000\nlate\n", 2, "after the media ends"),
        ("1\n00:00:08,000 --> 00:00:12,000\ntoo long\n", 2, "after the media ends"),
        ("WEBVTT\n\n00:00.000 --> 00:01.000\nok\n\n00:02.000 -> 00:03.000\nbad\n", 7, "time range"),
        ('[{"start": 0, "end": 1,}]', 1, "invalid JSON"),
    ],
)
def test_errors_name_the_line(settings, source, line, fragment):
    with pytest.raises(TranscriptError) as info:
        parse_transcript(source, 10.0, settings)
    assert info.value.line == line
    assert str(info.value).startswith(f"line {line}:")
    assert fragment in str(info.value)
    assert info.value.code == "transcript_invalid"


@pytest.mark.parametrize(
    ("segments", "fragment"),
    [
        ([{"start": 0, "text": "no end"}], "segment 0: missing 'end'"),
        ([{"start": 0, "end": 1}, {"start": -1, "end": 2}], "segment 1: 'start' must be a non-negative"),
        ([{"start": 0, "end": 1}, "text"], "segment 1: expected an object"),
        ([{"start": 0, "end": True}], "segment 0: 'end' must be seconds"),
        ([{"start": 0, "end": 1, "text": 5}], "segment 0: 'text' and 'speaker' must be strings"),
        ([{"start": 2, "end": 1}], "segment 0: end 1.000 s is not after start"),
        ({"not": "segments"}, "must be a list"),
        ([], "no cues"),
    ],
)
def test_json_errors_name_the_segment(settings, segments, fragment):
    with pytest.raises(TranscriptError) as info:
        parse_transcript(segments, 10.0, settings)
    assert fragment in str(info.value)


def test_end_within_tolerance_is_clamped_and_reported(settings):
    source = "1\n00:00:01,000 --> 00:00:10,300\nclose to the end\n"
    result = parse_transcript(
        source, 10.0, settings.model_copy(update={"transcript_time_tolerance_seconds": 0.5})
    )
    assert result.utterances[0].end == 10.0
    assert result.clamped == ["line 2: end 10.300 s clamped to the media's end 10.000 s"]


def test_limits(settings):
    many = [{"start": i, "end": i + 0.5} for i in range(5)]
    with pytest.raises(TranscriptError, match="limit is 4"):
        parse_transcript(many, None, settings.model_copy(update={"max_utterances": 4}))
    with pytest.raises(TranscriptError, match="larger than"):
        parse_transcript(SRT, None, settings.model_copy(update={"max_transcript_bytes": 10}))
    with pytest.raises(TranscriptError, match="UTF-8"):
        parse_transcript(b"\xff\xfe\x00garbage", None, settings)


def test_window_utterances():
    windows = window_utterances(10.0, 4.0)
    assert [(u.start, u.end) for u in windows] == [(0.0, 4.0), (4.0, 8.0), (8.0, 10.0)]
    assert all(u.text == "" and u.speaker is None for u in windows)
    # a last sliver shorter than a quarter window joins the window before it
    assert [(u.start, u.end) for u in window_utterances(8.5, 4.0)] == [(0.0, 4.0), (4.0, 8.5)]
    assert [(u.start, u.end) for u in window_utterances(0.3, 4.0)] == [(0.0, 0.3)]


def test_real_meld_rows(settings):
    path = settings.meld_dir / "dev_sent_emo.csv"
    if not path.is_file():
        pytest.skip(f"MELD CSVs not found under settings.meld_dir ({settings.meld_dir})")
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    one_digit_hour = [
        r for r in rows if r["StartTime"].split(":")[0].isdigit() and len(r["StartTime"].split(":")[0]) == 1
    ]
    assert one_digit_hour, "MELD dev has one-digit-hour times"
    for row in rows:
        start, end = parse_timestamp(row["StartTime"]), parse_timestamp(row["EndTime"])
        assert 0 <= start < 4 * 3600 and 0 <= end < 4 * 3600
        fraction = row["StartTime"].split(",")[1]
        assert start % 1 == pytest.approx(int(fraction) / 10 ** len(fraction), abs=1e-6)
    # One dialogue as JSON segments, MELD time strings and all (times are per-episode, so no duration).
    dialogue = [r for r in rows if r["Dialogue_ID"] == rows[0]["Dialogue_ID"]]
    segments = [
        {"start": r["StartTime"], "end": r["EndTime"], "text": r["Utterance"], "speaker": r["Speaker"]}
        for r in dialogue
    ]
    segments.sort(key=lambda s: parse_timestamp(s["start"]))
    result = parse_transcript(segments, None, settings)
    assert [u.speaker for u in result.utterances] == [s["speaker"] for s in segments]
    assert all(u.end > u.start for u in result.utterances)


@pytest.mark.parametrize(
    ("body", "speaker", "text"),
    [
        ("JOEY: How you doin'?", "JOEY", "How you doin'?"),
        ("Dr. Green: Sit down.", "Dr. Green", "Sit down."),
        ("Man 2: Yes.", "Man 2", "Yes."),
        ("Fireman #1: Fire!", "Fireman #1", "Fire!"),
        ("Boy in the Cape: Ta-da!", "Boy in the Cape", "Ta-da!"),
        ("Maitre d': Your table.", "Maitre d'", "Your table."),
        ("Joey's Hand Twin: Hey.", "Joey's Hand Twin", "Hey."),
        ("Ross: Look: it's fine.", "Ross", "Look: it's fine."),  # only the first colon is a label
        ("Listen to this: we won.", None, "Listen to this: we won."),
        ("I said: no way.", None, "I said: no way."),
        ("Well, here's the deal: no.", None, "Well, here's the deal: no."),
        ("Meet me at 10:30 tomorrow.", None, "Meet me at 10:30 tomorrow."),
        ("10:30: the bus leaves.", None, "10:30: the bus leaves."),
        ("At 10:30. Then home.", None, "At 10:30. Then home."),
        ("The One Who Came Back Too Late: hi", None, "The One Who Came Back Too Late: hi"),  # > 4 words
    ],
)
def test_srt_name_labels_become_the_speaker(body, speaker, text):
    srt = f"1\n00:00:00,000 --> 00:00:01,000\n{body}\n"
    [utterance] = parse_transcript(srt, None).utterances
    assert (utterance.speaker, utterance.text) == (speaker, text)


def test_lower_case_srt_names_count_when_they_recur():
    srt = "\n".join(
        f"{i + 1}\n00:00:0{i},000 --> 00:00:0{i},900\n{body}\n"
        for i, body in enumerate(["joey: hi", "ross 2: what?", "joey: bye", "ross 2: ok", "note this: once"])
    )
    parsed = parse_transcript(srt, None).utterances
    assert [(u.speaker, u.text) for u in parsed] == [
        ("joey", "hi"),
        ("ross 2", "what?"),
        ("joey", "bye"),
        ("ross 2", "ok"),
        (None, "note this: once"),
    ]
