"""Text tokenization to fixed-length id/mask arrays, backed by the Rust ``tokenizers`` library.

`load_tokenizer("shapes")` gives the exact WordPiece vocabulary of the embedded ``shapes``
dataset (no download).  A path to another WordPiece ``vocab.txt`` is loaded the same way, and a
directory or any other name goes through ``transformers.AutoTokenizer`` (fast tokenizers only),
so a pretrained text encoder's own vocabulary can be used.  Either way the result is wrapped in
the same small `Tokenizer` interface.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

SHAPES_VOCAB = Path(__file__).with_name("shapes_vocab.txt")

_BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclasses.dataclass(frozen=True, eq=False)
class Tokenizer:
    """A loaded tokenizer plus the special ids that training code needs.

    ``encode`` always yields ``[CLS] tokens [SEP]`` (or the backend's equivalents), truncated
    and right-padded to a fixed length so batches have static shapes under ``jit``.
    ``mask_id`` falls back to the unknown-token id for vocabularies without a mask token.
    """

    name_or_path: str
    backend: tokenizers.Tokenizer = dataclasses.field(repr=False)
    vocab_size: int
    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    unk_id: int
    special_ids: tuple[int, ...]
    # One configured copy per max_len: enabling truncation/padding mutates a Rust tokenizer, so
    # sharing one between threads asking for different lengths would race.
    _by_len: dict[int, tokenizers.Tokenizer] = dataclasses.field(
        default_factory=dict, init=False, repr=False
    )
    _lock: threading.Lock = dataclasses.field(
        default_factory=threading.Lock, init=False, repr=False
    )

    def _configured(self, max_len: int) -> tokenizers.Tokenizer:
        tok = self._by_len.get(max_len)
        if tok is None:
            with self._lock:
                tok = self._by_len.get(max_len)
                if tok is None:
                    tok = tokenizers.Tokenizer.from_str(self.backend.to_str())
                    # The post-processor's [CLS]/[SEP] are counted by truncation, so the last
                    # kept position of a truncated text is still [SEP].
                    tok.enable_truncation(max_length=max_len)
                    tok.enable_padding(
                        length=max_len,
                        pad_id=self.pad_id,
                        pad_token=self.backend.id_to_token(self.pad_id) or "[PAD]",
                    )
                    self._by_len[max_len] = tok
        return tok

    def encode(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokenizes ``texts`` to ``(input_ids, attention_mask)``, both int32 ``[N, max_len]``."""
        if isinstance(texts, str):
            # Iterating a str would silently tokenize it character by character.
            raise TypeError("encode expects a sequence of strings, not a single str")
        if max_len < 2:
            raise ValueError(f"max_len must leave room for [CLS] and [SEP], got {max_len}")
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, max_len), np.int32), np.zeros((0, max_len), np.int32)
        tok = self._configured(int(max_len))
        # encode_batch_fast skips offset tracking, which we never use; older releases lack it.
        batch_encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
        encodings = batch_encode(texts)
        ids = np.asarray([e.ids for e in encodings], dtype=np.int32)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int32)
        return ids, mask

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        """Text of one id sequence (padding and specials dropped by default)."""
        return self.backend.decode(
            [int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=skip_special_tokens
        )

    def __reduce__(self):
        # The serialized backend travels with the pickle, so Grain worker processes rebuild it
        # without touching files, the network, or importing transformers.
        fields = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.init and f.name != "backend"
        }
        return (_unpickle, (self.backend.to_str(), fields))


def _unpickle(backend_json: str, fields: dict) -> Tokenizer:
    return Tokenizer(backend=tokenizers.Tokenizer.from_str(backend_json), **fields)


def _wordpiece_backend(vocab_file: Path) -> tokenizers.Tokenizer:
    vocab = models.WordPiece.read_file(str(vocab_file))
    missing = [t for t in _BERT_SPECIALS if t not in vocab]
    if missing:
        raise ValueError(f"vocab file {vocab_file} lacks special tokens {missing}")
    tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    # Registered as specials so a literal "[MASK]" in text maps to its id, not to pieces.
    tok.add_special_tokens(list(_BERT_SPECIALS))
    return tok


def _from_vocab_file(name_or_path: str, vocab_file: Path) -> Tokenizer:
    backend = _wordpiece_backend(vocab_file)
    ids = {t: backend.token_to_id(t) for t in _BERT_SPECIALS}
    return Tokenizer(
        name_or_path=name_or_path,
        backend=backend,
        vocab_size=backend.get_vocab_size(with_added_tokens=True),
        pad_id=ids["[PAD]"],
        cls_id=ids["[CLS]"],
        sep_id=ids["[SEP]"],
        mask_id=ids["[MASK]"],
        unk_id=ids["[UNK]"],
        special_ids=tuple(sorted(ids.values())),
    )


def _first_id(*candidates: int | None) -> int | None:
    return next((c for c in candidates if c is not None), None)


def _from_transformers(name_or_path: str) -> Tokenizer:
    # Imported here: transformers takes seconds to import and only this branch needs it.
    import transformers

    hf = transformers.AutoTokenizer.from_pretrained(name_or_path, use_fast=True)
    if not getattr(hf, "is_fast", False):
        raise ValueError(f"{name_or_path!r} has no fast (Rust) tokenizer; one is required")
    cls_id = _first_id(hf.cls_token_id, hf.bos_token_id)
    sep_id = _first_id(hf.sep_token_id, hf.eos_token_id)
    if cls_id is None or sep_id is None:
        raise ValueError(f"tokenizer {name_or_path!r} has no [CLS]/BOS or [SEP]/EOS token")
    unk_id = _first_id(hf.unk_token_id, hf.pad_token_id, sep_id)
    pad_id = _first_id(hf.pad_token_id, sep_id)
    mask_id = _first_id(hf.mask_token_id, unk_id)
    backend = tokenizers.Tokenizer.from_str(hf.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return Tokenizer(
        name_or_path=name_or_path,
        backend=backend,
        vocab_size=len(hf),
        pad_id=pad_id,
        cls_id=cls_id,
        sep_id=sep_id,
        mask_id=mask_id,
        unk_id=unk_id,
        special_ids=tuple(sorted(set(hf.all_special_ids))),
    )


def _looks_like_path(name: str) -> bool:
    # Hub names are "model" or "org/model"; these prefixes and suffixes only occur in paths.
    return name.startswith(("/", "./", "../", "~")) or name.endswith((".txt", ".json"))


def load_tokenizer(name_or_path: str = "shapes") -> Tokenizer:
    """Loads a tokenizer by name or path.

    ``"shapes"``: the shipped vocabulary of the embedded dataset.  A ``.txt`` file: a BERT
    WordPiece vocabulary (lower-cased).  A directory or other name:
    ``transformers.AutoTokenizer.from_pretrained`` (must be a fast tokenizer).
    """
    if name_or_path == "shapes":
        return _from_vocab_file(name_or_path, SHAPES_VOCAB)
    path = Path(name_or_path).expanduser()
    if path.is_file():
        if path.suffix != ".txt":
            raise ValueError(
                f"tokenizer file {name_or_path!r} is not a WordPiece vocab .txt; pass its "
                "directory to load it with transformers"
            )
        return _from_vocab_file(name_or_path, path)
    if path.is_dir():
        return _from_transformers(str(path))
    if _looks_like_path(name_or_path):
        raise FileNotFoundError(f"tokenizer path {name_or_path!r} does not exist")
    return _from_transformers(name_or_path)
