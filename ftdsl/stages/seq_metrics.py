"""Metrics over text and tag sequences: generation (exact match, ROUGE-L, BLEU) and entities.

Pure functions over lists of strings (generated texts and their references) or lists of tag
lists; the libraries the registry names do the counting (``ftdsl/ir/schema/metrics.py``):

- ``exact_match``: the fraction of rows whose generation equals the reference after whitespace
  normalization (runs of whitespace become one space; leading/trailing whitespace dropped).
  Case and punctuation count.
- ``rouge_l``: the mean ROUGE-L F-measure per row, Google's ``rouge-score`` with the Porter
  stemmer (its default tokenizer: lowercase, ASCII letters and digits only -- text in other
  scripts scores 0 there; use ``bleu``/``exact_match`` for it). 0..1.
- ``bleu``: corpus BLEU of ``sacrebleu`` (default 13a tokenization, one reference per row). 0..100.
- ``entity_scores``: micro-averaged entity precision / recall / F1 of ``seqeval`` (its default,
  conlleval-compatible mode: a span is a chunk of B-/I- tags of one type), 0..1.

An empty list gives NaN (there is nothing to average), as the other metric functions do. The
libraries are imported on first use (never on the lint/plan path).
"""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["normalize", "exact_match", "rouge_l", "bleu", "entity_scores", "GENERATION", "ENTITY"]


def normalize(text: str) -> str:
    """Whitespace-normalized text: ``"  a \\n b "`` -> ``"a b"``."""
    return " ".join(str(text).split())


def _check(preds: Sequence[str], refs: Sequence, what: str) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"{what}: {len(preds)} predictions for {len(refs)} references")


def exact_match(preds: Sequence[str], refs: Sequence[str]) -> float:
    _check(preds, refs, "exact_match")
    if not preds:
        return math.nan
    return sum(normalize(p) == normalize(r) for p, r in zip(preds, refs)) / len(preds)


_SCORER = None


def _rouge_scorer():
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return _SCORER


def rouge_l(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Mean over rows of ROUGE-L F-measure (``RougeScorer(["rougeL"], use_stemmer=True)``)."""
    _check(preds, refs, "rouge_l")
    if not preds:
        return math.nan
    scorer = _rouge_scorer()
    return sum(scorer.score(str(r), str(p))["rougeL"].fmeasure for p, r in zip(preds, refs)) / len(preds)


def bleu(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU (``sacrebleu.corpus_bleu(preds, [refs])``), 0..100."""
    _check(preds, refs, "bleu")
    if not preds:
        return math.nan
    import sacrebleu

    return float(sacrebleu.corpus_bleu([str(p) for p in preds], [[str(r) for r in refs]]).score)


def entity_scores(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> dict[str, float]:
    """``{"entity_precision", "entity_recall", "entity_f1"}`` of ``seqeval`` (micro average over
    entity types; no predicted or no true entity gives 0, as ``zero_division=0``)."""
    _check(pred_tags, true_tags, "entity_scores")
    for i, (t, p) in enumerate(zip(true_tags, pred_tags)):
        if len(t) != len(p):
            raise ValueError(f"entity_scores: row {i} has {len(t)} true tags and {len(p)} predicted")
    if not true_tags:
        return {"entity_precision": math.nan, "entity_recall": math.nan, "entity_f1": math.nan}
    from seqeval.metrics import f1_score, precision_score, recall_score

    t = [list(map(str, row)) for row in true_tags]
    p = [list(map(str, row)) for row in pred_tags]
    return {"entity_precision": float(precision_score(t, p, zero_division=0)),
            "entity_recall": float(recall_score(t, p, zero_division=0)),
            "entity_f1": float(f1_score(t, p, zero_division=0))}


# The registry's generation metrics: name -> (generated texts, references) -> value
GENERATION = {"exact_match": exact_match, "rouge_l": rouge_l, "bleu": bleu}
# The registry's entity metrics: computed together by ``entity_scores`` (true tags, predicted tags)
ENTITY = ("entity_precision", "entity_recall", "entity_f1")
