"""Batching: dynamic padding, length grouping, balanced sampling, resume with skip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ftdsl.stages.batching import (
    batch_indices,
    iter_batches,
    num_batches,
    pad_token_id,
    padding_stats,
    tokenize_split,
)
from ftdsl.stages.dataset import Split
from ftdsl.stages.tokenizer import load_tokenizer, train_wordpiece

WORDS = ["alpha", "beta", "gamma", "delta", "echo", "fox", "golf", "hotel", "india", "juliet"]


def gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


@pytest.fixture(scope="module")
def text_split() -> Split:
    """400 texts of 3..58 words (5..60 tokens with [CLS]/[SEP]); labels 0/1."""
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 59)))) for _ in range(400)]
    labels = np.asarray([i % 2 for i in range(400)], dtype=np.int64)
    return Split(None, texts, labels, np.arange(1, 401, dtype=np.int64))


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, text_split):
    return train_wordpiece(text_split.texts, 100, tmp_path_factory.mktemp("tok") / "tokenizer", max_length=64)


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


def feature_split(n: int = 50, shape=(3,), labels=None) -> Split:
    x = np.arange(n * int(np.prod(shape)), dtype=np.float32).reshape(n, *shape)
    y = np.arange(n, dtype=np.int64) % 3 if labels is None else labels
    return Split(x, None, y, np.arange(1, n + 1, dtype=np.int64))


def as_lists(batches):
    return [{k: v.tolist() for k, v in b.items()} for b in batches]


# ---------------------------------------------------------------------------------------------
# features


def test_feature_batches_cover_every_row_once():
    sp = feature_split(50, shape=(1, 2, 2))
    batches = list(iter_batches(sp, batch_size=8, shuffle=True, generator=gen(0)))
    assert len(batches) == num_batches(sp, 8) == 7
    assert batches[0]["x"].dtype == torch.float32 and batches[0]["x"].shape == (8, 1, 2, 2)
    assert batches[0]["y"].dtype == torch.int64 and [len(b["y"]) for b in batches][-1] == 2
    first = torch.cat([b["x"][:, 0, 0, 0] for b in batches]).long() // 4
    assert sorted(first.tolist()) == list(range(50))
    assert first.tolist() != list(range(50))  # shuffled
    ys = torch.cat([b["y"] for b in batches])
    assert torch.equal(ys, first % 3)  # x and y stay paired


def test_no_shuffle_is_in_order():
    sp = feature_split(10)
    idx = [b["index"].tolist() for b in iter_batches(sp, batch_size=4, shuffle=False, generator=None, with_index=True)]
    assert idx == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_regression_targets_are_float():
    sp = Split(np.zeros((6, 2), np.float32), None, np.ones((6, 1), np.float32), np.arange(1, 7))
    b = next(iter_batches(sp, batch_size=4, shuffle=True, generator=gen(0)))
    assert b["y"].dtype == torch.float32 and b["y"].shape == (4, 1)


def test_order_comes_only_from_the_generator():
    sp = feature_split(40)
    torch.manual_seed(1)
    np.random.seed(1)
    a = as_lists(iter_batches(sp, batch_size=5, shuffle=True, generator=gen(7)))
    torch.manual_seed(2)
    np.random.seed(2)
    b = as_lists(iter_batches(sp, batch_size=5, shuffle=True, generator=gen(7)))
    c = as_lists(iter_batches(sp, batch_size=5, shuffle=True, generator=gen(8)))
    assert a == b and a != c


def test_draws_happen_at_the_start():
    sp = feature_split(40)
    g = gen(3)
    it = iter_batches(sp, batch_size=5, shuffle=True, generator=g)
    state = g.get_state()  # already advanced: the epoch's permutation is drawn
    assert not torch.equal(state, gen(3).get_state())
    list(it)
    assert torch.equal(g.get_state(), state)


def test_skip_gives_the_tail_of_the_epoch(text_split, tok):
    for sp, kw in ((feature_split(53), {}), (text_split, {"tokenizer": tok, "max_length": 64})):
        g = gen(11)
        start = g.get_state()
        full = as_lists(iter_batches(sp, batch_size=6, shuffle=True, generator=g, **kw))
        end = g.get_state()
        g2 = torch.Generator()
        g2.set_state(start)
        tail = as_lists(iter_batches(sp, batch_size=6, shuffle=True, generator=g2, skip=4, **kw))
        assert tail == full[4:]
        assert torch.equal(g2.get_state(), end)  # the same draws were made
    # balanced sampling too
    sp = feature_split(30)
    g, g2 = gen(5), gen(5)
    full = as_lists(iter_batches(sp, batch_size=4, shuffle=True, generator=g, balanced=True))
    assert as_lists(iter_batches(sp, batch_size=4, shuffle=True, generator=g2, balanced=True, skip=2)) == full[2:]


# ---------------------------------------------------------------------------------------------
# balanced


def test_balanced_sampler_evens_out_classes():
    labels = np.asarray([0] * 900 + [1] * 100, dtype=np.int64)
    sp = feature_split(1000, labels=labels)
    ys = torch.cat([b["y"] for b in iter_batches(sp, batch_size=50, shuffle=True, generator=gen(0), balanced=True)])
    assert len(ys) == 1000
    share = ys.float().mean().item()
    assert 0.44 < share < 0.56  # without balancing: 0.10
    plain = torch.cat([b["y"] for b in iter_batches(sp, batch_size=50, shuffle=True, generator=gen(0))])
    assert plain.float().mean().item() == pytest.approx(0.1)


def test_balanced_needs_class_labels():
    sp = Split(np.zeros((6, 2), np.float32), None, np.ones((6, 1), np.float32), np.arange(1, 7))
    with pytest.raises(ValueError, match="class labels"):
        list(iter_batches(sp, batch_size=2, shuffle=True, generator=gen(0), balanced=True))


# ---------------------------------------------------------------------------------------------
# text


def test_tokenize_split_adds_specials_and_truncates(text_split, tok, tok_dir):
    ids = tokenize_split(text_split, tok, None)
    lens = [len(x) for x in ids]
    assert min(lens) == 5 and max(lens) == 60
    cls, sep = tok.cls_token_id, tok.sep_token_id
    assert all(x[0] == cls and x[-1] == sep for x in ids)
    assert tokenize_split(text_split, tok, None) is ids  # cached per tokenizer and max_length
    short = tokenize_split(text_split, tok, 16)
    assert max(len(x) for x in short) == 16 and all(x[-1] == sep for x in short)
    # a raw tokenizers.Tokenizer or the folder gives the same ids
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    assert tokenize_split(text_split, raw, 16) == short
    assert tokenize_split(text_split, str(tok_dir), 16) == short
    assert raw.truncation is None  # the caller's tokenizer is left as it was
    assert pad_token_id(tok) == pad_token_id(raw) == 0


def test_dynamic_padding_and_truncation(text_split, tok):
    batches = list(iter_batches(text_split, batch_size=16, shuffle=True, generator=gen(0), tokenizer=tok, max_length=32))
    assert sum(len(b["y"]) for b in batches) == 400
    for b in batches:
        ids, mask = b["input_ids"], b["attention_mask"]
        assert ids.dtype == torch.int64 and mask.dtype == torch.int64 and ids.shape == mask.shape
        assert ids.shape[1] <= 32
        assert mask[:, 0].all()  # right padding
        longest = int(mask.sum(1).max())
        assert ids.shape[1] == longest  # padded to the longest in the batch, not to max_length
        assert (ids[mask == 0] == 0).all()
        lengths = mask.sum(1)
        assert (ids[torch.arange(len(ids)), lengths - 1] == tok.sep_token_id).all()


def test_dynamic_padding_wastes_far_less_than_max_length(text_split, tok):
    grouped = padding_stats(text_split, batch_size=16, generator=gen(0), tokenizer=tok, max_length=64)
    random = padding_stats(text_split, batch_size=16, generator=gen(0), tokenizer=tok, max_length=64,
                           length_grouped=False)
    assert grouped["real_tokens"] == random["real_tokens"] == sum(len(x) for x in tokenize_split(text_split, tok, 64))
    assert grouped["fixed_pad_tokens"] == 400 * 64 - grouped["real_tokens"]
    assert grouped["dynamic_pad_tokens"] < 0.5 * grouped["fixed_pad_tokens"]
    # length grouping beats random batches by a wide margin
    assert grouped["dynamic_pad_tokens"] < random["dynamic_pad_tokens"] / 3
    assert random["dynamic_pad_tokens"] < random["fixed_pad_tokens"]


def test_length_grouping_sorts_within_mega_chunks(text_split, tok):
    lengths = np.asarray([len(x) for x in tokenize_split(text_split, tok, None)])
    batches = batch_indices(400, batch_size=4, shuffle=True, generator=gen(2), lengths=lengths)
    assert sorted(np.concatenate(batches).tolist()) == list(range(400))
    spreads = [int(lengths[b].max() - lengths[b].min()) for b in batches]
    assert np.mean(spreads) <= 2  # 200 rows per chunk over 56 lengths: neighbours are close
    # the order of the batches is shuffled (not longest-first throughout)
    longest = [int(lengths[b].max()) for b in batches]
    assert longest != sorted(longest, reverse=True)
    # each mega-chunk (50 batches) holds a shuffled sample, so the batch orders differ by seed
    other = batch_indices(400, batch_size=4, shuffle=True, generator=gen(3), lengths=lengths)
    assert [b.tolist() for b in other] != [b.tolist() for b in batches]


def test_num_batches():
    assert num_batches(10, 4) == 3 and num_batches(8, 4) == 2 and num_batches(0, 4) == 0
