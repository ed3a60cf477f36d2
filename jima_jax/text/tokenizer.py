"""Report tokenizer: a sentencepiece model trained on the cleaned training reports only.

`word` mode reproduces the R2Gen vocabulary (every whitespace token seen at least `min_count` times
in training, unknown words -> <unk>), so BLEU and token-frequency buckets match the literature;
`unigram` mode is the subword option. Both reserve ids 0..3 for pad/bos/eos/unk, and both are a
plain sentencepiece `.model` file on disk, so the fingerprint (sha256 of the model bytes) pins the
exact vocabulary that frequency tables and checkpoints were built against.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import pathlib
from typing import Iterable, Sequence

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from jima_jax import atomic
from jima_jax.text.symbols import BOS_ID, EOS_ID, NUM_SPECIAL_TOKENS, PAD_ID, UNK_ID

_WORD_BOUNDARY = '\u2581'  # sentencepiece's marker for a preceding space
_MODES = {'word': sentencepiece_model_pb2.TrainerSpec.WORD,
          'unigram': sentencepiece_model_pb2.TrainerSpec.UNIGRAM}


def _trainer_options(mode: str, vocab_size: int) -> dict:
    """Options that make sentencepiece treat cleaned reports verbatim (no normalisation/splits)."""
    return dict(
        model_type=mode, vocab_size=vocab_size,
        pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
        pad_piece='<pad>', bos_piece='<s>', eos_piece='</s>', unk_piece='<unk>',
        unk_surface='<unk>', normalization_rule_name='identity', character_coverage=1.0,
        split_by_number=False, split_by_unicode_script=False,
        max_sentencepiece_length=512 if mode == 'word' else 16,
        max_sentence_length=1 << 20, hard_vocab_limit=True, num_threads=1,
        minloglevel=2)


class Tokenizer:
    """Maps cleaned report text to ids and back; ids never include bos/eos (callers add them)."""

    def __init__(self, model_proto: bytes):
        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        spec = sentencepiece_model_pb2.ModelProto.FromString(self._proto).trainer_spec
        modes = {v: k for k, v in _MODES.items()}
        if spec.model_type not in modes:
            raise ValueError(f'Unsupported sentencepiece model type {spec.model_type}; '
                             'expected a word or unigram model trained by Tokenizer.train.')
        self.mode = modes[spec.model_type]
        ids = (self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id(), self._sp.unk_id())
        if ids != (PAD_ID, BOS_ID, EOS_ID, UNK_ID):
            raise ValueError(f'Sentencepiece model reserves ids {ids} for pad/bos/eos/unk; '
                             f'jima_jax needs {(PAD_ID, BOS_ID, EOS_ID, UNK_ID)}. Retrain it.')

    def __getstate__(self):
        # Only the model bytes: the processor's own pickle format differs between sentencepiece
        # versions, the serialized model does not.
        return {'model_proto': self._proto}

    def __setstate__(self, state):
        self.__init__(state['model_proto'])

    # ------------------------------------------------------------------ training
    @classmethod
    def train(cls, texts: Iterable[str], *, mode: str = 'word', min_count: int = 3,
              vocab_size: int = 0) -> "Tokenizer":
        """Trains on cleaned training reports.

        word: vocabulary = tokens seen >= min_count times (vocab_size must be 0: the count decides).
        unigram: sentencepiece subwords with exactly `vocab_size` pieces (specials included).
        """
        if mode not in _MODES:
            raise ValueError(f"Unknown tokenizer mode {mode!r}; use 'word' or 'unigram' "
                             "(config data.tokenizer).")
        texts = [t for t in texts if t.strip()]
        if not texts:
            raise ValueError('Tokenizer.train got no non-empty training reports.')
        if mode == 'word':
            if vocab_size:
                raise ValueError('word mode takes its size from data.min_count; set '
                                 'data.vocab_size=0.')
            counts = collections.Counter(w for t in texts for w in t.split())
            kept = sum(1 for c in counts.values() if c >= min_count)
            if kept == 0:
                raise ValueError(f'No training token occurs >= min_count={min_count} times; '
                                 'lower data.min_count.')
            vocab_size = kept + NUM_SPECIAL_TOKENS
        elif vocab_size <= NUM_SPECIAL_TOKENS:
            raise ValueError(f'unigram mode needs data.vocab_size > {NUM_SPECIAL_TOKENS} '
                             f'(got {vocab_size}).')
        out = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=out,
                                           **_trainer_options(mode, vocab_size))
        except RuntimeError as e:
            raise ValueError(f'sentencepiece cannot build a {mode} vocabulary of {vocab_size} '
                             f'pieces from {len(texts)} training reports ({e}); lower '
                             'data.vocab_size.') from e
        tok = cls(out.getvalue())
        if mode == 'word':
            tok._check_word_vocab(counts, min_count)
        return tok

    def _check_word_vocab(self, counts: collections.Counter, min_count: int) -> None:
        """Word mode must equal the R2Gen rule exactly; sentencepiece filters are a silent risk."""
        want = {w for w, c in counts.items() if c >= min_count}
        got = {self.id_to_token(i) for i in range(NUM_SPECIAL_TOKENS, self.vocab_size)}
        if got != want:
            raise RuntimeError(f'sentencepiece word vocabulary differs from the min_count '
                               f'rule: missing {sorted(want - got)[:10]}, '
                               f'extra {sorted(got - want)[:10]}.')

    # ------------------------------------------------------------------ use
    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self._proto).hexdigest()

    def encode(self, text: str) -> list[int]:
        """Cleaned text -> ids (no bos/eos); word mode maps unknown words to UNK_ID."""
        return list(self._sp.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text, stopping at the first EOS and dropping PAD/BOS."""
        kept = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                kept.append(i)
        if self.mode == 'word':
            return ' '.join(self.id_to_token(i) for i in kept)
        return self._sp.decode(kept)

    def id_to_token(self, i: int) -> str:
        """Id -> token text (word mode: the word itself; unigram: the piece, '\u2581' = space)."""
        piece = self._sp.id_to_piece(int(i))
        return piece[1:] if self.mode == 'word' and piece.startswith(_WORD_BOUNDARY) else piece

    def token_to_id(self, token: str) -> int:
        """Token text -> id; UNK_ID if not in the vocabulary."""
        piece = _WORD_BOUNDARY + token if self.mode == 'word' else token
        return int(self._sp.piece_to_id(piece))

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Writes the sentencepiece model atomically (a temp file renamed into place)."""
        atomic.write_bytes(path, self._proto)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f'Tokenizer model {path} is missing; re-run the prepare stage '
                                    '(python -m jima_jax.main --mode prepare --config ...).')
        return cls(path.read_bytes())
