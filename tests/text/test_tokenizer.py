"""Tokenizer: word mode reproduces the R2Gen vocabulary; round trips; files; unigram option."""

import collections
import json

import pytest

from jima_jax.data import sources
from jima_jax.text.cleaning import clean_report
from jima_jax.text.symbols import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from jima_jax.text.tokenizer import Tokenizer

CORPUS = ['the heart is normal .', 'the lungs are clear .', 'the heart is enlarged .',
          'no effusion . the lungs are clear .']


def test_word_vocabulary_is_the_min_count_rule():
    tok = Tokenizer.train(CORPUS, min_count=2)
    counts = collections.Counter(w for t in CORPUS for w in t.split())
    want = {w for w, c in counts.items() if c >= 2}
    assert {tok.id_to_token(i) for i in range(4, tok.vocab_size)} == want
    assert tok.vocab_size == len(want) + 4
    assert [tok.id_to_token(i) for i in range(4)] == ['<pad>', '<s>', '</s>', '<unk>']
    assert tok.token_to_id('enlarged') == UNK_ID  # seen once < min_count
    assert tok.mode == 'word'


def test_encode_decode_round_trip_and_specials():
    tok = Tokenizer.train(CORPUS, min_count=2)
    ids = tok.encode('the lungs are clear .')
    assert BOS_ID not in ids and EOS_ID not in ids and UNK_ID not in ids
    assert tok.decode(ids) == 'the lungs are clear .'
    assert tok.encode('the zebra is clear')[1] == UNK_ID
    assert (tok.decode([BOS_ID] + ids + [EOS_ID] + tok.encode('no') + [PAD_ID])
            == 'the lungs are clear .')
    assert tok.decode([tok.token_to_id('the'), UNK_ID]) == 'the <unk>'


def test_save_load_and_fingerprint(tmp_path):
    tok = Tokenizer.train(CORPUS, min_count=2)
    tok.save(tmp_path / 'sub' / 'tok.model')
    back = Tokenizer.load(tmp_path / 'sub' / 'tok.model')
    assert back.fingerprint == tok.fingerprint and len(tok.fingerprint) == 64
    assert back.encode('the heart is normal .') == tok.encode('the heart is normal .')
    assert Tokenizer.train(CORPUS, min_count=1).fingerprint != tok.fingerprint
    assert not list((tmp_path / 'sub').glob('*.tmp*'))
    with pytest.raises(FileNotFoundError, match='prepare'):
        Tokenizer.load(tmp_path / 'missing.model')


def test_word_mode_errors():
    with pytest.raises(ValueError, match='vocab_size=0'):
        Tokenizer.train(CORPUS, vocab_size=50)
    with pytest.raises(ValueError, match='min_count'):
        Tokenizer.train(CORPUS, min_count=100)
    with pytest.raises(ValueError, match='no non-empty'):
        Tokenizer.train(['', '  '])
    with pytest.raises(ValueError, match='mode'):
        Tokenizer.train(CORPUS, mode='bpe')


def test_unigram_mode():
    corpus = CORPUS * 20 + ['mild cardiomegaly with small bilateral pleural effusions .'] * 5
    tok = Tokenizer.train(corpus, mode='unigram', vocab_size=30)
    assert tok.mode == 'unigram' and tok.vocab_size == 30
    text = 'mild cardiomegaly . the lungs are clear .'
    assert tok.decode(tok.encode(text)) == text
    with pytest.raises(ValueError, match='vocab_size'):
        Tokenizer.train(corpus, mode='unigram', vocab_size=0)
    with pytest.raises(ValueError, match='lower data.vocab_size'):
        Tokenizer.train(corpus, mode='unigram', vocab_size=80)  # more pieces than the corpus has


def test_iu_xray_vocabulary_size_is_pinned():
    path = sources.shared_data_dir() / 'iu_xray' / 'annotation.json'
    if not path.is_file():
        pytest.skip(f'shared data not found at {path} (set JIMA_SHARED_DATA)')
    train = [clean_report(e['report']) for e in json.loads(path.read_text())['train']]
    tok = Tokenizer.train(train, min_count=3)
    # 759 words seen >= 3 times + pad/bos/eos/unk; R2Gen's own count is 760 (words + <unk>).
    assert tok.vocab_size == 763
    assert tok.decode(tok.encode(train[0])) == train[0]
