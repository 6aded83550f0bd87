"""The `distill` stage: train a student to match a teacher (knowledge distillation, Hinton et al.).

The student is trained by the train stage's own loop (``train.fit``), so every train attribute
works as in ``train`` (epochs/max_steps, batch, accumulate, optimizer, schedule, precision,
clip, freeze, lora, early_stop, eval_every, checkpoint/resume). Only the loss of a train batch
changes::

    loss = alpha * KL(p_teacher || p_student) * T^2 + (1 - alpha) * task_loss
    p = softmax(logits / T)        T = temperature; task_loss = the `loss` attribute (default cross-entropy)

(``F.kl_div(log_softmax(student / T), softmax(teacher / T), "batchmean")``; the ``T^2`` keeps
the gradient scale independent of T.) For a regression task the distillation term is the mean
squared error between the student's and the teacher's outputs, and ``temperature`` is unused.
Validation and test metrics (and early stopping on them) use the task loss, as in ``train``.

The teacher (trained; any TorchModel) runs in eval mode, under ``no_grad`` and the same autocast
as the student; its outputs are computed once per training row, the first time the row is drawn,
and reused in later epochs (eval mode is deterministic). It sees the data as it was trained to:
features raw (its own normalization is inside it), text tokenized with *its own* tokenizer and
``max_length``. So teacher and student may use different tokenizers (a fine-tuned pretrained
teacher, a from-scratch student on the data's WordPiece vocabulary): the task is sequence
classification, so only the per-text outputs must line up, not the tokens.

Checked before training (StageError FTP510): the teacher is trained, has the student's task and
number of outputs, takes the data's modality and input shape, and was trained with the same
class names in the same order (else its outputs would not mean the same classes).

Reports: the train stage's ``metrics.json`` / curves, plus the teacher's ``teacher.valid.*`` /
``teacher.test.*`` metrics and ``valid.agreement`` / ``test.agreement`` (the fraction of rows
where student and teacher predict the same class) on the artifact's metrics and in
``out/<stage>/distill.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ftdsl.errors import StageError
from ftdsl.stages import metrics as M
from ftdsl.stages.torch_model import TorchModel

__all__ = ["run", "kd_loss"]


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float, task: str = "classify") -> torch.Tensor:
    """The distillation term: ``KL(softmax(t/T) || softmax(s/T)) * T^2`` (classify), MSE (regress)."""
    if task != "classify":
        return F.mse_loss(student, teacher)
    T = float(temperature)
    return F.kl_div(F.log_softmax(student / T, dim=-1), F.softmax(teacher / T, dim=-1),
                    reduction="batchmean") * (T * T)


def _outputs(task: dict) -> int:
    return int(task["labels"] if task["$call"] == "classify" else task["outputs"])


class _Teacher:
    """The teacher module, its inputs for rows of a split, and a per-row cache of its outputs."""

    def __init__(self, art: TorchModel, data, name: str):
        self.art, self.name = art, name
        spec = art.spec
        self.modality = spec.get("modality")
        if self.modality != data.modality:
            raise StageError("FTP510", f"teacher `{name}` takes {self.modality}, but `{data.source}` has "
                             f"{data.modality}", hint="distill on the kind of data the teacher was trained on")
        if self.modality == "features":
            shape = spec.get("input_shape")
            if shape is not None and tuple(shape) != tuple(data.input_shape or ()):
                raise StageError("FTP510", f"teacher `{name}` was trained on inputs of shape {tuple(shape)}, but "
                                 f"`{data.source}` has {tuple(data.input_shape or ())}")
        self.tokenizer = None
        self.max_length = spec.get("max_length")
        if self.modality == "text":
            self.tokenizer = self._load_tokenizer()
        self.module = art.build()
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(split) -> (outputs, filled)
        self._ids: dict[int, list[list[int]]] = {}

    def _load_tokenizer(self):
        d = self.art.tokenizer_dir
        if d is None:
            raise StageError("FTP510", f"teacher `{self.name}` is a text model without a tokenizer",
                             hint="train the teacher with a pretrained model or a data block with `tokenizer`")
        if self.art.spec.get("source") != "pretrained" and (Path(d) / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            return Tokenizer.from_file(str(Path(d) / "tokenizer.json"))  # no transformers import
        return self.art.load_tokenizer()

    def bind(self, trainer) -> None:
        self.device = trainer.device
        self.autocast = trainer._autocast
        if self.modality == "text" and self.max_length is None:
            self.max_length = trainer.max_length
        self.module.to(self.device)
        if self.tokenizer is not None:
            from ftdsl.stages.batching import pad_token_id

            self.pad_id = pad_token_id(self.tokenizer)

    def _forward(self, split, rows: np.ndarray) -> torch.Tensor:
        if self.modality == "text":
            from ftdsl.stages.batching import tokenize_split, truncate

            key = id(split)
            if key not in self._ids:
                self._ids[key] = tokenize_split(split, self.tokenizer, self.max_length)
            ids = self._ids[key]
            seqs = [truncate(ids[i], self.max_length) for i in rows]
            width = max((len(s) for s in seqs), default=0)
            input_ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.int64)
            mask = torch.zeros((len(seqs), width), dtype=torch.int64)
            for r, s in enumerate(seqs):
                input_ids[r, : len(s)] = torch.tensor(s, dtype=torch.int64)
                mask[r, : len(s)] = 1
            inputs = {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}
        else:
            x = np.ascontiguousarray(split.features[rows], dtype=np.float32)
            inputs = {"x": torch.from_numpy(x).to(self.device)}
        with torch.no_grad(), self.autocast():
            return self.module(**inputs).float()

    def outputs(self, split, rows: torch.Tensor | np.ndarray, k: int) -> torch.Tensor:
        """The teacher's fp32 outputs for ``rows`` of ``split`` (computed once per row)."""
        rows_np = rows.cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
        key = id(split)
        if key not in self._cache:
            self._cache[key] = (torch.zeros((len(split), k), dtype=torch.float32, device=self.device),
                                torch.zeros(len(split), dtype=torch.bool))
        out, filled = self._cache[key]
        idx = torch.from_numpy(rows_np.astype(np.int64))
        missing = np.unique(rows_np[~filled[idx].numpy()])
        if len(missing):
            out[torch.from_numpy(missing).to(self.device)] = self._forward(split, missing)
            filled[torch.from_numpy(missing)] = True
        return out[idx.to(self.device)]

    def predict(self, split, k: int, batch: int) -> torch.Tensor:
        n = len(split)
        parts = [self.outputs(split, np.arange(s, min(n, s + batch)), k) for s in range(0, n, batch)]
        return torch.cat(parts) if parts else torch.zeros((0, k))


class _Distiller:
    def __init__(self, teacher: _Teacher, temperature: float, alpha: float):
        self.teacher, self.T, self.alpha = teacher, float(temperature), float(alpha)
        self.trainer = None

    def prepare(self, trainer) -> None:
        t = self.teacher
        t_task, s_task = t.art.spec["task"], trainer.spec["task"]
        if t_task["$call"] != s_task["$call"] or _outputs(t_task) != _outputs(s_task):
            def show(task):
                key = "labels" if task["$call"] == "classify" else "outputs"
                return f"{task['$call']}({key} = {_outputs(task)})"

            raise StageError("FTP510", f"teacher `{t.name}` is {show(t_task)} but the student is {show(s_task)}",
                             hint="teacher and student need the same task and number of outputs")
        t_names, d_names = t.art.spec.get("label_names"), trainer.data.label_names
        if s_task["$call"] == "classify" and t_names is not None and d_names is not None \
                and [str(x) for x in t_names] != [str(x) for x in d_names]:
            raise StageError("FTP510", f"teacher `{t.name}` was trained with the classes {list(t_names)[:10]}, but "
                             f"`{trainer.data.source}` has {list(d_names)[:10]}; the teacher's outputs would "
                             "not mean the same classes", hint="distill on data with the teacher's labels")
        t.bind(trainer)
        self.trainer = trainer
        self.k = trainer.num_outputs
        self.task = trainer.task
        trainer.spec["distilled_from"] = t.art.spec.get("trained_by") or t.name
        trainer.spec["distill"] = {"temperature": self.T, "alpha": self.alpha}
        trainer.log(f"distilling from `{t.name}` (temperature {self.T:g}, alpha {self.alpha:g})")

    def loss(self, out: torch.Tensor, batch: dict, trainer) -> torch.Tensor:
        teacher = self.teacher.outputs(trainer.splits["train"], batch["index"], self.k)
        loss = self.alpha * kd_loss(out, teacher, self.T, self.task) if self.alpha > 0 else out.new_zeros(())
        if self.alpha < 1:
            loss = loss + (1.0 - self.alpha) * trainer.criterion(out, batch["y"].to(out.device))
        return loss


@torch.no_grad()
def _student_outputs(trainer, split) -> torch.Tensor:
    outs = []
    module = trainer.module
    module.eval()
    for b in trainer._batches(split, shuffle=False):
        with trainer._autocast():
            outs.append(module(**trainer._inputs(b)).float())
    return torch.cat(outs) if outs else torch.zeros((0, trainer.num_outputs))


def _compare(d: _Distiller) -> dict[str, Any]:
    """The teacher's metrics and the student/teacher agreement on valid and test."""
    tr, res = d.trainer, {}
    for name in ("valid", "test"):
        split = tr.splits.get(name)
        if split is None or len(split) == 0:
            continue
        t_out = d.teacher.predict(split, d.k, tr.batch)
        y = split.labels
        if d.task == "classify":
            m = M.classification_metrics(t_out.cpu().numpy(), y, d.k)
        else:
            m = M.regression_metrics(t_out.cpu().numpy(), y)
        m["loss"] = float(tr.criterion(t_out, torch.as_tensor(y).to(t_out.device)))
        res.update({f"teacher.{name}.{k}": v for k, v in m.items()})
        s_out = _student_outputs(tr, split).to(t_out.device)
        if d.task == "classify":
            res[f"{name}.agreement"] = float((s_out.argmax(-1) == t_out.argmax(-1)).double().mean())
        else:
            res[f"{name}.teacher_mse"] = float(F.mse_loss(s_out, t_out))
    return res


def run(inputs: dict[str, object], attrs: dict, ctx) -> TorchModel:
    """Distill ``inputs["teacher"]`` into ``inputs["student"]`` on ``inputs["data"]``."""
    from ftdsl.stages.train import fit

    teacher_art, student, data = inputs.get("teacher"), inputs.get("student"), inputs.get("data")
    for role, art in (("teacher", teacher_art), ("student", student)):
        if not isinstance(art, TorchModel):
            # the front end guarantees a float TorchModel here (FTP209, FTP207): anything else is a bug
            raise TypeError(f"distill needs a TorchModel as `{role}`, got {type(art).__name__}")
    teacher_name = (attrs.get("teacher") or {}).get("$ref", "teacher") if isinstance(attrs.get("teacher"), dict) \
        else "teacher"
    if not teacher_art.trained:
        raise StageError("FTP510", f"the teacher `{teacher_name}` is an untrained model (a `model` block)",
                         hint="use a trained model as the teacher: `teacher = <a train stage>`")
    temperature, alpha = float(attrs.get("temperature") or 2.0), float(attrs.get("alpha", 0.5))
    if not temperature > 0:
        raise StageError("FTP510", f"temperature = {temperature}: must be > 0")
    if not 0.0 <= alpha <= 1.0:
        raise StageError("FTP510", f"alpha = {alpha}: must be in [0, 1]")

    teacher = _Teacher(teacher_art, data, teacher_name)
    d = _Distiller(teacher, temperature, alpha)
    art = fit(student, data, attrs, ctx, loss_fn=d.loss, prepare=d.prepare)
    extra = _compare(d) if d.trainer is not None else {}
    art.metrics.update({k: v for k, v in extra.items() if isinstance(v, (int, float))})
    from ftdsl.stages.outputs import json_safe

    out = Path(ctx.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distill.json").write_text(json.dumps(json_safe({
        "teacher": teacher_name, "temperature": temperature, "alpha": alpha,
        "student": {k: v for k, v in art.metrics.items() if not k.startswith("teacher.")},
        "teacher_metrics": {k[len("teacher."):]: v for k, v in extra.items() if k.startswith("teacher.")},
    }), indent=1), encoding="utf-8")
    mpath = out / "metrics.json"
    existing = json.loads(mpath.read_text(encoding="utf-8")) if mpath.is_file() else {}
    mpath.write_text(json.dumps(json_safe({**existing, **extra}), indent=1, sort_keys=True), encoding="utf-8")
    return art
