"""Issue 7: the schema is the only declaration, and these tests tie it to the engine.

Every constructor the schema declares has exactly one implementation in the engine and vice
versa; every table the checker reads (metrics, modalities, data sets, quantization and export
support) matches what the engine does; and what a stage builds from a block that writes no
argument is exactly what the schema (and so `plan`, and the cache key) says.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from ftdsl.frontend import compile_pipeline
from ftdsl.ir import schema as S
from ftdsl.ir.lower import complete_attrs, complete_call, stage_config
from ftdsl.ir.schema import modality as M
from ftdsl.ir.schema.metrics import METRIC_REGISTRY, QUALITY_METRICS, metric_mode, metrics_for


def names(family: str) -> set[str]:
    return set(S.CONSTRUCTORS[family])


def default(family: str, ctor: str, arg: str):
    return S.CONSTRUCTORS[family][ctor].arg(arg).default


def enum_choices(family: str, ctor: str, arg: str) -> set[str]:
    return set(S.CONSTRUCTORS[family][ctor].arg(arg).type.choices)


# --- one implementation per constructor, and no implementation without a constructor ----------------


def test_block_kinds_are_the_stage_registry():
    from ftdsl.stages import STAGES

    assert set(STAGES) == set(S.STAGE_KINDS)


def test_architectures_activations_cells_and_inits():
    from ftdsl.stages import hf_archs, nets

    # every arch is either an ftdsl net or a transformers config builder, never both
    assert not set(nets.ARCHS) & set(hf_archs.HF_ARCHS)
    assert set(nets.ARCHS) | set(hf_archs.HF_ARCHS) == names("arch") == set(M.ARCH_INPUTS) == set(M.ARCH_TASKS)
    assert nets.TEXT_ARCHS == {a for a, ins in M.ARCH_INPUTS.items() if ins == (M.TEXT,)}
    # what the checker says each arch carries is what the engine builds
    assert all(M.ARCH_TASKS[a] == ("classify", "regress") for a in nets.ARCHS)
    assert all(M.ARCH_TASKS[a] == (hf_archs.ARCH_TASK[a],) for a in hf_archs.HF_ARCHS)
    # and a transformers arch takes what its task takes
    assert all(set(M.ARCH_INPUTS[a]) <= set(M.TASK_INPUTS[hf_archs.ARCH_TASK[a]]) for a in hf_archs.HF_ARCHS)
    assert set(nets._ACTIVATIONS) == enum_choices("arch", "mlp", "activation")
    assert set(nets.CELLS) == enum_choices("arch", "rnn", "cell")
    init_t = S.KINDS["model"].field("init").type
    symbols = {c for o in init_t.options if isinstance(o, S.Enum) for c in o.choices} - {"default"}
    assert set(nets.INITS) == symbols | names("init") and nets.INIT_CALLS == names("init")


def test_optimizers_schedules_losses():
    from ftdsl.stages.train_factories import LOSSES, OPTIMIZERS, SCHEDULES

    assert set(OPTIMIZERS) == names("optimizer")
    assert set(SCHEDULES) == names("schedule")
    from ftdsl.stages.tasks import TASKS

    assert set(LOSSES) == names("loss")
    # a task has a default `loss` (classify, regress) or is a token task with its own criterion
    assert not set(M.TASK_LOSS) & set(TASKS)
    assert set(M.TASK_LOSS.values()) <= names("loss") and set(M.TASK_LOSS) | set(TASKS) == names("task")


def test_token_tasks_are_the_schemas_and_take_what_the_checker_says():
    """TASKS (the engine's token tasks) and TASK_INPUTS (what the checker allows) agree: each task's
    check_data accepts a listed modality's data past the modality check and refuses every other one."""
    from types import SimpleNamespace

    from ftdsl.errors import StageError
    from ftdsl.stages.tasks import TASKS, get_task

    assert set(M.TASK_INPUTS) == names("task") and set(TASKS) <= names("task")
    for name in TASKS:
        task = get_task(name)
        assert task.name == name and task.auto_class.startswith("AutoModelFor")
        call = complete_call({"$call": name, **({"labels": ["O", "B-X"]} if name == "token_classify" else {})}, "task")
        for modality in M.MODALITIES:
            data = SimpleNamespace(modality=modality, splits={}, source="d.jsonl")
            if modality in M.TASK_INPUTS[name]:
                task.check_data(data, call)
            else:
                with pytest.raises(StageError) as e:
                    task.check_data(data, call)
                assert e.value.code == "FTP510", (name, modality)


def test_sources_quantize_methods_and_export_formats():
    from ftdsl.stages import _sources
    from ftdsl.stages.export import DEFAULT_FILES

    assert set(_sources.SKLEARN_SETS) == set(M.SKLEARN_DATASETS) == enum_choices("source", "sklearn", "name")
    for art, table in M.QUANTIZE_SUPPORT.items():
        assert set(table) <= names("quantize_method"), art
    assert set(M.QUANTIZE_SUPPORT["OnnxModel"]) == names("quantize_method")  # onnxruntime does them all
    assert set(M.EXPORT_ORIGINS) == names("export_format") == set(DEFAULT_FILES)


# --- metrics: the registry and the metric functions ---------------------------------------------------


def test_every_task_metric_is_computed_and_nothing_else():
    from ftdsl.stages import evaluate
    from ftdsl.stages import metrics as F

    rng = np.random.default_rng(0)
    logits, y = rng.normal(size=(40, 3)), rng.integers(0, 3, 40)
    pred, t = rng.normal(size=(40, 2)), rng.normal(size=(40, 2))
    assert set(F.quality_metrics("classify", logits, y)) == set(metrics_for("classify", tracked_only=True))
    assert set(F.quality_metrics("regress", pred, t)) == set(metrics_for("regress", tracked_only=True))
    assert set(F.BY_TASK) == names("task")
    # evaluate-only: measured (latency, size) or computed from generated texts (exact_match, rouge_l, bleu)
    assert set(evaluate.MEASURED) | set(F.GENERATED) == {m.name for m in METRIC_REGISTRY.values() if not m.tracked}
    from ftdsl.stages.seq_metrics import GENERATION

    assert set(F.GENERATED) == set(GENERATION)
    assert set(evaluate.QUALITY) == set(QUALITY_METRICS)
    assert set(S.KINDS["evaluate"].field("metrics").type.item.choices) == set(METRIC_REGISTRY)


def test_directions_agree_with_what_the_metrics_measure():
    """A perfect model beats a random one in the registry's direction, for every quality metric."""
    from ftdsl.stages import metrics as F

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    perfect, noise = np.eye(3)[y] * 10.0, rng.normal(size=(200, 3))
    t = rng.normal(size=(200, 1))
    good = {**F.quality_metrics("classify", perfect, y)}
    bad = {**F.quality_metrics("classify", noise, y)}
    rgood, rbad = F.quality_metrics("regress", t + 0.01, t), F.quality_metrics("regress", -t, t)
    for g, b in ((good, bad), (rgood, rbad)):
        for name in g:
            assert (g[name] > b[name]) == METRIC_REGISTRY[name].higher_is_better, name


def test_r2_matches_sklearn():
    from sklearn.metrics import r2_score

    from ftdsl.stages import metrics as F

    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    assert math.isclose(F.r2(a, b), r2_score(a, b), rel_tol=1e-9)
    const = np.ones((10, 1))
    assert F.r2(const, const) == r2_score(const, const) == 1.0


# --- known data sets: what the checker assumes is what the reader yields --------------------------


@pytest.mark.parametrize("name", sorted(M.SKLEARN_DATASETS))
def test_sklearn_tables_match_the_data(name):
    from ftdsl.stages import _sources

    info, part = M.SKLEARN_DATASETS[name], _sources.load_sklearn(name)
    assert len(np.unique(part.labels_raw)) == info.classes
    assert tuple(part.features.shape[1:]) == info.shape


def test_synthetic_class_count_is_the_declared_one():
    from ftdsl.stages import _sources

    part = _sources.load_synthetic({"$call": "synthetic", "classes": 5, "features": 8, "n": 300}, 0)
    info = M.source_info("synthetic", complete_call({"$call": "synthetic", "classes": 5, "features": 8}, "source"))
    assert len(np.unique(part.labels_raw)) == info.classes == 5 and part.features.shape[1:] == info.shape


# --- defaults: what a stage builds from a block that writes nothing -------------------------------


def _lowered_model(arch: str) -> dict:
    c = compile_pipeline("p.ftp", (), text=f"ftp 1\nmodel m {{ arch = {arch}, task = classify(labels = 3) }}\n")
    assert c.program is not None
    return stage_config(c.program.blocks["m"])


def _build(arch: str, *, input_shape=None, vocab=50):
    from ftdsl.stages import model as model_stage
    from ftdsl.stages.base import StageContext

    attrs = _lowered_model(arch)
    ctx = StageContext("m", "model", ".", None, None, seed=0)
    spec = dict(model_stage.run({}, attrs, ctx).spec, input_shape=input_shape, vocab_size=vocab, pad_id=0)
    return attrs, model_stage.materialize(spec, seed=0).net


def test_mlp_defaults_are_the_schemas():
    attrs, net = _build("mlp", input_shape=(4,))
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert attrs["arch"]["hidden"] == default("arch", "mlp", "hidden")
    assert [m.out_features for m in linears[:-1]] == default("arch", "mlp", "hidden") == [128]
    acts = {type(m).__name__.lower() for m in net.body}
    assert default("arch", "mlp", "activation") in acts


def test_cnn_defaults_are_the_schemas():
    _, net = _build("cnn", input_shape=(1, 8, 8))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == default("arch", "cnn", "channels")
    assert all(c.kernel_size == (default("arch", "cnn", "kernel"),) * 2 for c in convs)
    assert net.fc[0].out_features == default("arch", "cnn", "hidden")


def test_rnn_defaults_are_the_schemas():
    _, net = _build("rnn")
    d = {a.name: a.default for a in S.CONSTRUCTORS["arch"]["rnn"].args}
    assert net.embed.embedding_dim == d["embed"] == 64
    assert net.rnn.hidden_size == d["hidden"] and net.rnn.num_layers == d["layers"]
    assert type(net.rnn).__name__.lower() == d["cell"] and net.rnn.bidirectional == d["bidirectional"]


def test_transformer_defaults_are_the_schemas():
    _, net = _build("transformer")
    d = {a.name: a.default for a in S.CONSTRUCTORS["arch"]["transformer"].args}
    layer = net.encoder.layers[0]
    assert len(net.encoder.layers) == d["layers"] and net.embed.embedding_dim == d["dim"]
    assert layer.self_attn.num_heads == d["heads"] and layer.linear1.out_features == d["ff"]
    assert net.pos.num_embeddings == d["max_len"] and layer.dropout.p == d["dropout"]


@pytest.mark.parametrize("arch", ["gpt", "llama", "t5"])
def test_transformers_arch_defaults_are_the_schemas(arch):
    """gpt/llama/t5 written without arguments build the config the schema's defaults describe."""
    from ftdsl.stages import hf_archs

    task = hf_archs.ARCH_TASK[arch]
    c = compile_pipeline("p.ftp", (), text=f"ftp 1\nmodel m {{ arch = {arch}, task = {task}() }}\n")
    assert c.program is not None
    attrs = stage_config(c.program.blocks["m"])
    d = {a.name: a.default for a in S.CONSTRUCTORS["arch"][arch].args}
    assert attrs["arch"] == {"$call": arch, **d}
    cfg = hf_archs.build_config({"arch": attrs["arch"], "vocab_size": 300, "pad_id": 0, "bos_id": 1, "eos_id": 2})
    assert (cfg.vocab_size, cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (300, 0, 1, 2)
    if arch == "gpt":
        assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.n_positions) == (d["layers"], d["heads"], d["width"], d["max_len"])
        assert cfg.resid_pdrop == cfg.attn_pdrop == cfg.embd_pdrop == d["dropout"]
    elif arch == "llama":
        assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size) == (d["layers"], d["heads"], d["width"])
        assert cfg.num_key_value_heads == d["heads"] and d["kv_heads"] is None  # default: one per head
        assert cfg.intermediate_size == 4 * d["width"] and d["ff"] is None
        assert cfg.max_position_embeddings == d["max_len"] and cfg.rope_parameters["rope_theta"] == d["rope_theta"]
    else:
        assert (cfg.num_layers, cfg.num_decoder_layers, cfg.num_heads, cfg.d_model, cfg.d_ff) == (
            d["layers"], d["layers"], d["heads"], d["width"], d["ff"])
        assert cfg.d_kv == d["width"] // d["heads"] and d["head_dim"] is None and cfg.dropout_rate == d["dropout"]


def test_a_partial_arch_call_is_completed_from_the_schema():
    from ftdsl.stages import nets

    net = nets.build_net({"$call": "rnn", "hidden": 8}, 2, vocab_size=20)
    assert net.embed.embedding_dim == default("arch", "rnn", "embed")


def test_optimizer_schedule_loss_and_adapter_defaults_are_the_schemas():
    from ftdsl.stages.train_factories import build_optim, call_of

    attrs = complete_attrs("train", {})
    net = nn.Linear(4, 3)
    _, opt, _, _, crit = build_optim(net, attrs, total_steps=10, device="cpu", precision="fp32", task="classify",
                                     num_outputs=3, train_labels=np.array([0, 1, 2]))
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["lr"] == default("optimizer", "adamw", "lr")
    assert opt.param_groups[0]["weight_decay"] == default("optimizer", "adamw", "weight_decay")
    assert isinstance(crit, nn.CrossEntropyLoss) and crit.label_smoothing == 0.0
    ada = call_of("adalora", "lora")
    assert (ada["r"], ada["target_r"]) == (default("adapter", "adalora", "r"), default("adapter", "adalora", "target_r"))
    assert (ada["r"], ada["target_r"]) == (12, 8)


# --- directions: lowering, plan and the sweep agree -------------------------------------------------


SWEEP = """ftp 1
data d {
  source = synthetic(task = classify, n = 240, features = 6, classes = 2, seed = 3)
  split = { train = 0.6, valid = 0.4 }
}
model m { arch = mlp(hidden = [16]), task = classify(labels = 2) }
train t {
  model = m
  data = d
  epochs = 3
  batch = 32
  optimizer = sgd(lr = 0.01)
  early_stop = { metric = "valid.loss", patience = 5 }
}
sweep s {
  target = t
  over = { "optimizer.lr" = [0.0001, 0.5] }
  metric = "valid.loss"
}
"""


def test_modes_default_from_the_metric_in_the_lowering():
    c = compile_pipeline("p.ftp", (), text=SWEEP)
    assert c.ok, c.diagnostics
    assert stage_config(c.program.blocks["s"])["mode"] == "min" == metric_mode("valid.loss")
    assert stage_config(c.program.blocks["t"])["early_stop"]["mode"] == "min"
    acc = compile_pipeline("p.ftp", (), text=SWEEP.replace('"valid.loss"', '"valid.accuracy"'))
    assert stage_config(acc.program.blocks["s"])["mode"] == "max"


def test_a_valid_loss_sweep_plans_min_and_picks_the_lowest_loss(tmp_path, capsys):
    """Issue 7: `metric = "valid.loss"` showed `"mode": "max"` in plan and kept the highest loss."""
    from ftdsl.cli import main

    p = tmp_path / "sweep.ftp"
    p.write_text(SWEEP)
    cache = tmp_path / "cache"
    assert main(["plan", str(p), "--cache", str(cache), "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    sweep = next(s for s in plan["stages"] if s["name"] == "s")
    assert sweep["settings"]["mode"] == "min"
    assert main(["run", str(p), "--cache", str(cache), "--quiet"]) == 0
    table = json.loads((tmp_path / "out" / "s" / "trials.json").read_text())
    assert table["mode"] == "min"
    losses = {r["trial"]: r["metric"] for r in table["trials"] if r["status"] == "ok"}
    assert len(losses) == 2 and max(losses.values()) > min(losses.values()) + 1e-6  # the test can fail
    assert losses[table["best_trial"]] == min(losses.values())


def test_evaluate_metrics_default_by_the_models_task():
    """A regression model evaluated without `metrics` used to get accuracy/f1 (FTP232 at no span)."""
    src = ("ftp 1\ndata d { source = synthetic(task = regress) }\nmodel m { arch = mlp(), task = regress() }\n"
           "train t { model = m, data = d, epochs = 1 }\nevaluate e { models = [t], data = d.test }\n")
    c = compile_pipeline("p.ftp", (), text=src)
    assert c.ok, [(d.code, d.message) for d in c.diagnostics]
    assert stage_config(c.program.blocks["e"], c.program)["metrics"] == ["mse", "mae"]
    cls = compile_pipeline("p.ftp", (), text=src.replace("task = regress)", "task = classify, classes = 2)")
                           .replace("task = regress()", "task = classify(labels = 2)"))
    assert stage_config(cls.program.blocks["e"], cls.program)["metrics"] == ["accuracy", "f1"]


@pytest.mark.parametrize("adapter", ["lora", "adalora"])
def test_default_adapter_targets_fit_a_from_scratch_model(adapter):
    """The schema's old default `targets = ["query", "value"]` named modules no from-scratch net has
    (FTP510 at run time); the default is now the engine's choice, so `lora = lora()` trains an mlp."""
    from ftdsl.stages import nets
    from ftdsl.stages.model import FeaturesModule
    from ftdsl.stages.train_factories import call_of
    from ftdsl.stages.train_setup import apply_lora

    c = compile_pipeline("p.ftp", (), text="ftp 1\ndata d { source = sklearn(\"iris\") }\n"
                         "model m { arch = mlp(hidden = [8]), task = classify(labels = 3) }\n"
                         f"train t {{ model = m, data = d, epochs = 1, lora = {adapter}() }}\n")
    call = call_of(stage_config(c.program.blocks["t"])["lora"], "lora")
    assert call["targets"] is None
    module = FeaturesModule(nets.build_net({"$call": "mlp", "hidden": [8]}, 3, input_shape=(4,)), (4,))
    apply_lora(module, call, total_steps=100)
    assert any("lora" in n for n, _ in module.named_parameters())
