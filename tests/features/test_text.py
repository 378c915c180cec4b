import pytest
import torch

from shared.contract.bundle import UtteranceMeta
from shared.contract.features.spec import FeatureSpec
from shared.contract.features.text import load_tokenizer, tokenize_utterances

DIALOGUE = [
    UtteranceMeta(0.0, 1.0, "Where were you last night?", "Ross"),
    UtteranceMeta(1.0, 2.0, "At the coffee house, obviously.", "Rachel"),
    UtteranceMeta(2.0, 3.0, "", None),
    UtteranceMeta(3.0, 4.0, "Oh my God, that is amazing!", "Monica"),
]


def decode_segment(ids: torch.Tensor, types: torch.Tensor, mask: torch.Tensor, segment: int) -> str:
    tokenizer = load_tokenizer(FeatureSpec().tokenizer)
    picked = ids[(types == segment) & (mask == 1)].tolist()
    return tokenizer.decode(picked, skip_special_tokens=True)


def test_shapes_and_dtypes_without_context():
    spec = FeatureSpec(max_tokens=16)
    out = tokenize_utterances(DIALOGUE, spec)
    assert set(out) == {"input_ids", "attention_mask", "token_type_ids"}
    for tensor in out.values():
        assert tensor.shape == (4, 16) and tensor.dtype == torch.int64
    assert int(out["token_type_ids"].sum()) == 0
    assert decode_segment(out["input_ids"][0], out["token_type_ids"][0], out["attention_mask"][0], 0) == (
        "where were you last night?"
    )
    # An empty text still gets [CLS] [SEP]: the row is valid input, only without words.
    assert int(out["attention_mask"][2].sum()) == 2


def test_context_segment_holds_neighbours_with_speakers():
    spec = FeatureSpec(max_tokens=64, context_turns=1)
    out = tokenize_utterances(DIALOGUE, spec)
    ids, types, mask = out["input_ids"][1], out["token_type_ids"][1], out["attention_mask"][1]
    assert decode_segment(ids, types, mask, 0) == "at the coffee house, obviously."
    context = decode_segment(ids, types, mask, 1)
    # previous turn first, then the next non-empty one within reach (index 2 is empty: none)
    assert context == "ross : where were you last night?"
    last = decode_segment(out["input_ids"][3], out["token_type_ids"][3], out["attention_mask"][3], 1)
    assert last == ""  # the only neighbour within one turn is empty: no context segment
    two = tokenize_utterances(DIALOGUE, FeatureSpec(max_tokens=64, context_turns=2))
    context = decode_segment(two["input_ids"][1], two["token_type_ids"][1], two["attention_mask"][1], 1)
    assert context == "ross : where were you last night? monica : oh my god, that is amazing!"


def test_previous_only_context_leaves_out_the_next_turns():
    spec = FeatureSpec(max_tokens=64, context_turns=2, context_next=False)
    out = tokenize_utterances(DIALOGUE, spec)
    rows = [
        decode_segment(out["input_ids"][i], out["token_type_ids"][i], out["attention_mask"][i], 1)
        for i in range(len(DIALOGUE))
    ]
    # The first turn has nothing before it; Monica's two previous turns skip the empty one.
    assert rows == [
        "",
        "ross : where were you last night?",
        "ross : where were you last night? rachel : at the coffee house, obviously.",
        "rachel : at the coffee house, obviously.",
    ]
    # No separator is spent on an absent next side (the symmetric context holds one between them).
    tokenizer = load_tokenizer(spec.tokenizer)
    symmetric = FeatureSpec(max_tokens=64, context_turns=2)
    both = tokenize_utterances(DIALOGUE, symmetric)
    for tokens, separators in ((out, 0), (both, 1)):
        second = tokens["input_ids"][1][tokens["token_type_ids"][1] == 1].tolist()
        assert second.count(tokenizer.sep_token_id) == separators
    assert spec.hash != symmetric.hash
    # A spec that says nothing of the next turns keeps the hash it had before the setting existed.
    assert '"context_next"' not in symmetric.canonical_json()


def test_previous_only_context_spends_no_budget_on_a_separator():
    tokenizer = load_tokenizer(FeatureSpec().tokenizer)
    before, utterance = DIALOGUE[0], DIALOGUE[1]
    own = len(tokenizer.tokenize(utterance.text))
    turn = len(tokenizer.tokenize(f"{before.speaker}: {before.text}"))
    # Exactly room for the utterance, the pair's special tokens and the previous turn.
    length = own + tokenizer.num_special_tokens_to_add(pair=True) + turn
    previous_only = tokenize_utterances(
        [before, utterance], FeatureSpec(max_tokens=length, context_turns=1, context_next=False)
    )
    assert int(previous_only["token_type_ids"][1].sum()) == turn
    assert int(previous_only["attention_mask"][1].sum()) == length
    # Both sides reserve a separator, so the same turn no longer fits.
    symmetric = tokenize_utterances([before, utterance], FeatureSpec(max_tokens=length, context_turns=1))
    assert int(symmetric["token_type_ids"][1].sum()) == 0


def test_long_context_never_cuts_the_utterance():
    long_turn = UtteranceMeta(0, 1, " ".join(["word"] * 200), "Joey")
    short = UtteranceMeta(1, 2, "How you doin?", "Joey")
    out = tokenize_utterances([long_turn, short], FeatureSpec(max_tokens=24, context_turns=1))
    assert decode_segment(out["input_ids"][1], out["token_type_ids"][1], out["attention_mask"][1], 0) == (
        "how you doin?"
    )
    # the 200-word neighbour does not fit whole, so no context is added
    assert int(out["token_type_ids"][1].sum()) == 0
    # the long utterance itself is truncated to max_tokens
    assert int(out["attention_mask"][0].sum()) == 24


def test_empty_list_gives_empty_tensors():
    out = tokenize_utterances([], FeatureSpec())
    assert out["input_ids"].shape == (0, FeatureSpec().max_tokens)


def test_tokenizer_from_local_path(tmp_path):
    source = load_tokenizer(FeatureSpec().tokenizer)
    source.save_pretrained(tmp_path)
    out = tokenize_utterances(DIALOGUE[:1], FeatureSpec(tokenizer=str(tmp_path), max_tokens=16))
    reference = tokenize_utterances(DIALOGUE[:1], FeatureSpec(max_tokens=16))
    assert torch.equal(out["input_ids"], reference["input_ids"])


@pytest.mark.parametrize("turns", [1, 3])
def test_context_marks_only_second_segment(turns):
    out = tokenize_utterances(DIALOGUE, FeatureSpec(max_tokens=48, context_turns=turns))
    types, mask = out["token_type_ids"], out["attention_mask"]
    assert bool(((types == 1) <= (mask == 1)).all())  # context tokens are real tokens


def test_token_arrays_are_numpy_and_match_the_torch_view():
    from shared.contract.features.text import token_arrays

    spec = FeatureSpec(max_tokens=32, context_turns=1)
    arrays = token_arrays(DIALOGUE, spec)
    tensors = tokenize_utterances(DIALOGUE, spec)
    for name, array in arrays.items():
        assert array.dtype.name == "int64" and array.shape == (4, 32)
        assert torch.equal(torch.from_numpy(array), tensors[name])
