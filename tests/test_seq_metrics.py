"""Generation and entity metrics (ftdsl/stages/seq_metrics.py) against the libraries called
directly and against hand-computed cases, and their tie to the schema's metric registry."""

from __future__ import annotations

import math
import random

import pytest

from ftdsl.stages import seq_metrics as S

WORDS = "the cat dog sat ran on mat a big small house running runs quickly".split()


def _sentences(rnd: random.Random, n: int) -> list[str]:
    return [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, 12))) for _ in range(n)]


def test_rouge_l_equals_rouge_score_with_stemming():
    from rouge_score import rouge_scorer

    rnd = random.Random(0)
    preds, refs = _sentences(rnd, 40), _sentences(rnd, 40)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    want = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)) / len(preds)
    assert math.isclose(S.rouge_l(preds, refs), want, rel_tol=1e-12)


def test_rouge_l_hand_cases():
    # LCS("the cat sat", "the cat sat down") = 3: P = 3/3, R = 3/4, F = 2PR/(P+R) = 6/7
    assert math.isclose(S.rouge_l(["the cat sat"], ["the cat sat down"]), 6 / 7)
    # stemming: "cats running" and "cat run" are the same stems (Porter); case and punctuation are dropped
    assert S.rouge_l(["Cats, running!"], ["cat run"]) == 1.0
    assert S.rouge_l(["a b"], ["c d"]) == 0.0
    # the mean over rows, not a corpus LCS
    assert math.isclose(S.rouge_l(["a b", "x"], ["a b", "y"]), 0.5)


def test_bleu_equals_sacrebleu_corpus_bleu():
    import sacrebleu

    rnd = random.Random(1)
    preds, refs = _sentences(rnd, 30), _sentences(rnd, 30)
    assert math.isclose(S.bleu(preds, refs), sacrebleu.corpus_bleu(preds, [refs]).score, rel_tol=1e-12)


def test_bleu_hand_cases():
    assert math.isclose(S.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]), 100.0)
    assert S.bleu(["dog"], ["the cat sat on the mat"]) == 0.0
    # corpus BLEU is not the mean of sentence BLEUs: one perfect row of two does not give 50
    two = S.bleu(["the cat sat on the mat", "a b c d"], ["the cat sat on the mat", "w x y z"])
    assert 0 < two < 100 and not math.isclose(two, 50.0)


def test_exact_match_normalizes_whitespace_only():
    assert S.exact_match(["  hello\n world "], ["hello world"]) == 1.0
    assert S.exact_match(["Hello world"], ["hello world"]) == 0.0  # case counts
    assert S.exact_match(["hello world."], ["hello world"]) == 0.0  # punctuation counts
    assert S.exact_match(["a", "b", "c", "d"], ["a", "x", "c", "y"]) == 0.5
    assert S.exact_match(["", " "], ["", "\t"]) == 1.0


def test_empty_inputs_are_nan_and_lengths_must_agree():
    for f in (S.exact_match, S.rouge_l, S.bleu):
        assert math.isnan(f([], []))
        with pytest.raises(ValueError):
            f(["a"], ["a", "b"])
    assert all(math.isnan(v) for v in S.entity_scores([], []).values())
    with pytest.raises(ValueError):
        S.entity_scores([["O", "B-PER"]], [["O"]])


def _random_tags(rnd: random.Random, n: int) -> list[list[str]]:
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG"]
    return [[rnd.choice(tags) for _ in range(rnd.randint(1, 10))] for _ in range(n)]


def test_entity_scores_equal_seqeval():
    from seqeval.metrics import f1_score, precision_score, recall_score

    rnd = random.Random(2)
    true = _random_tags(rnd, 50)
    pred = [[t if rnd.random() < 0.7 else rnd.choice(["O", "B-PER", "I-LOC", "B-ORG"]) for t in row] for row in true]
    got = S.entity_scores(true, pred)
    assert math.isclose(got["entity_precision"], precision_score(true, pred))
    assert math.isclose(got["entity_recall"], recall_score(true, pred))
    assert math.isclose(got["entity_f1"], f1_score(true, pred))
    assert 0 < got["entity_f1"] < 1


def test_entity_scores_hand_cases():
    # true spans: PER(0-1), LOC(3); predicted: PER(0-1) only -> P = 1, R = 1/2, F = 2/3
    s = S.entity_scores([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "O"]])
    assert s == {"entity_precision": 1.0, "entity_recall": 0.5, "entity_f1": pytest.approx(2 / 3)}
    # a span predicted one word short is a different span: no match
    s = S.entity_scores([["B-PER", "I-PER"]], [["B-PER", "O"]])
    assert s["entity_f1"] == 0.0 and s["entity_precision"] == 0.0
    # no entity anywhere: 0, not a warning or NaN
    assert S.entity_scores([["O", "O"]], [["O", "O"]])["entity_f1"] == 0.0


def test_generation_metrics_are_the_registrys():
    from ftdsl.ir.schema.metrics import GENERATIVE, METRIC_REGISTRY, TOKEN_CLASSIFY

    gen = {n for n, m in METRIC_REGISTRY.items() if m.tasks == GENERATIVE and not m.tracked}
    assert set(S.GENERATION) == gen
    assert set(S.ENTITY) == {n for n in METRIC_REGISTRY if n.startswith("entity_")}
    assert all(METRIC_REGISTRY[n].tasks == (TOKEN_CLASSIFY,) for n in S.ENTITY)
    # directions: a perfect generation beats a wrong one in the registry's direction
    refs = ["the cat sat on the mat", "a big house"]
    good, bad = refs, ["dog", "ran quickly"]
    for n, f in S.GENERATION.items():
        assert (f(good, refs) > f(bad, refs)) == METRIC_REGISTRY[n].higher_is_better, n
