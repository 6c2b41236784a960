"""Tests of `vlp_jax.data.tokenizer` on the shipped shapes vocabulary."""

import pickle

import numpy as np
import pytest

from vlp_jax.data import shapes
from vlp_jax.data.tokenizer import SHAPES_VOCAB, Tokenizer, load_tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return load_tokenizer("shapes")


def _check_layout(tok: Tokenizer, ids: np.ndarray, mask: np.ndarray) -> None:
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    lengths = mask.sum(axis=1)
    for row, m, n in zip(ids, mask, lengths, strict=True):
        assert row[0] == tok.cls_id
        assert row[n - 1] == tok.sep_id
        np.testing.assert_array_equal(m, np.arange(len(m)) < n)
        assert (row[n:] == tok.pad_id).all()
        assert not np.isin(row[1 : n - 1], tok.special_ids).any()


def test_special_ids(tok: Tokenizer) -> None:
    assert tok.pad_id == 0
    assert tok.vocab_size == len(shapes.vocabulary())
    assert set(tok.special_ids) == {tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.unk_id}


def test_encode_dataset_captions(tok: Tokenizer) -> None:
    source = shapes.ShapesSource("validation", num_examples=300)
    items = [source[i] for i in range(300)]
    texts = [x["caption"] for x in items] + [x["hard_negative"] for x in items]
    ids, mask = tok.encode(texts, 32)
    assert ids.shape == mask.shape == (600, 32)
    _check_layout(tok, ids, mask)
    assert not (ids == tok.unk_id).any()
    # Every grammar word is a whole token: one id per word.
    np.testing.assert_array_equal(mask.sum(1), [len(t.split()) + 2 for t in texts])
    assert tok.decode(ids[0]) == texts[0]


def test_truncation_keeps_sep(tok: Tokenizer) -> None:
    text = "a large red circle to the left of a small blue square"
    ids, mask = tok.encode([text, "a circle"], 6)
    assert ids.shape == (2, 6)
    assert mask[0].all()
    assert ids[0, 0] == tok.cls_id and ids[0, -1] == tok.sep_id
    assert tok.decode(ids[0]) == "a large red circle"
    _check_layout(tok, ids, mask)
    # Another length right after uses its own configuration.
    assert tok.encode([text], 40)[1].sum() == len(text.split()) + 2


def test_unseen_words_and_case(tok: Tokenizer) -> None:
    ids, mask = tok.encode(["A Zebra!", ""], 16)
    _check_layout(tok, ids, mask)
    assert not (ids == tok.unk_id).any()  # pieces, not [UNK]
    assert tok.decode(ids[0]) == "a zebra!"
    assert mask[1].sum() == 2
    with pytest.raises(TypeError):
        tok.encode("a red circle", 8)
    with pytest.raises(ValueError):
        tok.encode(["a"], 1)


def test_vocab_file_path(tok: Tokenizer, tmp_path) -> None:
    from_path = load_tokenizer(str(SHAPES_VOCAB))
    texts = ["a small green triangle above a large yellow diamond"]
    for a, b in zip(from_path.encode(texts, 16), tok.encode(texts, 16), strict=True):
        np.testing.assert_array_equal(a, b)
    small = tmp_path / "vocab.txt"
    small.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red"]) + "\n")
    ids, _ = load_tokenizer(str(small)).encode(["red blue"], 6)
    assert ids.tolist() == [[2, 5, 1, 3, 0, 0]]


def test_missing_path_errors(tmp_path) -> None:
    missing = str(tmp_path / "nope" / "vocab.txt")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_tokenizer(missing)
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        load_tokenizer("./no_such_dir")


def test_pickle_round_trip(tok: Tokenizer) -> None:
    tok.encode(["warm the per-length cache"], 8)
    clone = pickle.loads(pickle.dumps(tok))
    assert (clone.vocab_size, clone.special_ids, clone.name_or_path) == (
        tok.vocab_size,
        tok.special_ids,
        tok.name_or_path,
    )
    texts = ["a red circle is below a blue square"]
    for a, b in zip(clone.encode(texts, 12), tok.encode(texts, 12), strict=True):
        np.testing.assert_array_equal(a, b)


def test_transformers_directory(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    reference = load_tokenizer("shapes")
    # Built from the Rust object because transformers' BERT constructors changed across releases.
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=reference.backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    hf.save_pretrained(tmp_path)
    wrapped = load_tokenizer(str(tmp_path))
    assert (wrapped.cls_id, wrapped.sep_id, wrapped.pad_id, wrapped.mask_id) == (2, 3, 0, 4)
    texts = ["a large red circle to the left of a small blue square", "a circle"]
    for a, b in zip(wrapped.encode(texts, 8), reference.encode(texts, 8), strict=True):
        np.testing.assert_array_equal(a, b)
