"""Issue 7: everything knowable statically is a lint diagnostic, with a span and a hint; issue 6: bounds.

Each test is a pipeline that used to lint clean ("All checks passed") and then fail at run time
(FTP510/FTP530) or crash, and must now be an error at the offending text. Compiled in-process
with `ftdsl.frontend.compile_pipeline`, as `ftdsl lint` compiles it; one test goes through the CLI.
"""

from __future__ import annotations

import pytest

from ftdsl.cli import main
from ftdsl.frontend import compile_pipeline

DIGITS = 'data d { source = sklearn("digits") }\n'
IRIS = 'data d { source = sklearn("iris") }\n'
TEXT = 'data s {\n  source = csv("sms.tsv", delimiter = "\\t")\n  text = "text"\n}\n'
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def lint(text: str):
    return compile_pipeline("p.ftp", (), text=text).diagnostics


def only(diags, code):
    found = [d for d in diags if d.code == code]
    assert found, f"no {code} in {[(d.code, d.message) for d in diags]}"
    return found


def errors(diags):
    return [(d.code, d.message) for d in diags if d.severity == "error"]


def at(text: str, needle: str, occurrence: int = 0) -> tuple[int, int]:
    i = -1
    for _ in range(occurrence + 1):
        i = text.index(needle, i + 1)
    return text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1


def at_index(text: str, i: int) -> tuple[int, int]:
    return text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1


def pos(d) -> tuple[int, int]:
    return d.span.line, d.span.col


def train(model: str, data: str, extra: str = "") -> str:
    return f"train t {{ model = {model}, data = {data}, epochs = 1{extra} }}\n"


# --- modality: data and model ---------------------------------------------------------------------


def test_transformer_on_numeric_data_is_ftp240_at_the_data_reference():
    src = DIGITS + "model m { arch = transformer(), task = classify(labels = 10) }\n" + train("m", "d")
    d = only(lint(src), "FTP240")[0]
    assert d.severity == "error" and pos(d) == at_index(src, src.index("data = d") + len("data = "))
    assert "numeric images" in d.message and "text" in d.message
    assert "mlp" in d.hint and "cnn" in d.hint
    assert any("transformer" in s.message for s in d.secondary)


def test_pretrained_text_encoder_on_numeric_data_is_ftp240():
    src = IRIS + f'model m {{ pretrained = "{MINILM}", task = classify(labels = 3) }}\n' + train("m", "d")
    d = only(lint(src), "FTP240")[0]
    assert "numeric features" in d.message
    assert any(s.span.line == 2 and "takes text" in s.message for s in d.secondary)


def test_mlp_on_text_is_ftp240_with_a_text_model_hint():
    src = TEXT + "model m { arch = mlp(), task = classify(labels = 2) }\n" + train("m", "s")
    d = only(lint(src), "FTP240")[0]
    assert "text" in d.message and "rnn" in d.hint and "pretrained" in d.hint


def test_modality_follows_trained_and_exported_models_into_evaluate():
    src = (DIGITS + TEXT + "model m { arch = cnn(), task = classify(labels = 10) }\n" + train("m", "d")
           + "export e { from = t, format = onnx(), verify = true }\n"
           + "evaluate r { models = [t, e], data = s.test }\n")
    d = only(lint(src), "FTP240")[0]
    assert pos(d) == at(src, "s.test")


def test_matching_modalities_are_clean():
    text = TEXT.replace('text = "text"\n', 'text = "text"\n  tokenizer = wordpiece(vocab = 100)\n')  # rnn: FTP248 without
    src = (DIGITS + text + "model m { arch = cnn(), task = classify(labels = 10) }\n"
           + "model r { arch = rnn(), task = classify(labels = 2) }\n" + train("m", "d")
           + "train u { model = r, data = s, epochs = 1 }\n")
    assert errors(lint(src)) == []


# --- labels ---------------------------------------------------------------------------------------


def test_three_labels_on_ten_class_digits_is_ftp241_at_the_count():
    src = DIGITS + "model m { arch = mlp(), task = classify(labels = 3) }\n" + train("m", "d")
    d = only(lint(src), "FTP241")[0]
    assert pos(d) == at(src, "3")
    assert "10" in d.message and d.hint == "use `task = classify(labels = 10)`"


def test_synthetic_class_count_and_regression_targets_are_checked():
    src = ('data d { source = synthetic(task = classify, classes = 5) }\n'
           "model m { arch = mlp(), task = classify(labels = 3) }\n" + train("m", "d"))
    assert "has 5" in only(lint(src), "FTP241")[0].message
    src = ('data d { source = synthetic(task = regress) }\n'
           "model m { arch = mlp(), task = classify(labels = 3) }\n" + train("m", "d"))
    assert "regression" in only(lint(src), "FTP241")[0].message
    ok = ('data d { source = synthetic(task = classify, classes = 3) }\n'
          "model m { arch = mlp(), task = classify(labels = 3) }\n" + train("m", "d"))
    assert errors(lint(ok)) == []


# --- quantization, export, capabilities -----------------------------------------------------------


def test_static_pytorch_quantization_of_a_text_model_is_ftp242():
    src = (TEXT + f'model m {{ pretrained = "{MINILM}", task = classify(labels = 2) }}\n' + train("m", "s")
           + "quantize q { from = t, method = static(calibrate = s.valid) }\nevaluate r { models = [q], data = s.test }\n")
    d = only(lint(src), "FTP242")[0]
    assert pos(d) == at(src, "static(")
    assert "dynamic()" in d.hint and "ONNX" in d.hint


def test_dynamic_uint8_on_a_pytorch_model_is_ftp242_but_fine_on_onnx():
    base = IRIS + "model m { arch = mlp(), task = classify(labels = 3) }\n" + train("m", "d")
    src = base + "quantize q { from = t, method = dynamic(dtype = uint8) }\nevaluate r { models = [q], data = d.test }\n"
    d = only(lint(src), "FTP242")[0]
    assert pos(d) == at(src, "uint8") and "dtype = int8" in d.hint
    onnx = (base + "export e { from = t, format = onnx(), verify = true }\n"
            "quantize q { from = e, method = dynamic(dtype = uint8) }\nevaluate r { models = [q], data = d.test }\n")
    assert errors(lint(onnx)) == []


def test_fuse_on_a_pytorch_quantization_is_ftp242_but_fine_on_onnx():
    """`fuse = true` was silently ignored on a PyTorch model: lint says so instead."""
    base = IRIS + "model m { arch = mlp(), task = classify(labels = 3) }\n" + train("m", "d")
    src = base + "quantize q { from = t, method = dynamic(fuse = true) }\nevaluate r { models = [q], data = d.test }\n"
    d = only(lint(src), "FTP242")[0]
    assert pos(d) == at(src, "true") and "ONNX" in d.hint
    onnx = (base + "export e { from = t, format = onnx(), verify = true }\n"
            "quantize q { from = e, method = dynamic(fuse = true) }\nevaluate r { models = [q], data = d.test }\n")
    assert errors(lint(onnx)) == []


def test_quantizing_a_quantized_onnx_graph_again_is_ftp207():
    src = (IRIS + "model m { arch = mlp(), task = classify(labels = 3) }\n" + train("m", "d")
           + "export e { from = t, format = onnx(), verify = true }\n"
           + "quantize q { from = e, method = dynamic() }\nquantize q2 { from = q, method = fp16 }\n"
           + "evaluate r { models = [q2], data = d.test }\n")
    d = only(lint(src), "FTP207")[0]
    assert pos(d) == at_index(src, src.index("from = q,") + len("from = "))


def test_hf_export_of_an_arch_model_is_ftp243_and_fine_for_a_pretrained_one():
    src = IRIS + "model m { arch = mlp(), task = classify(labels = 3) }\n" + train("m", "d") + \
        "export e { from = t, format = hf, verify = true }\n"
    d = only(lint(src), "FTP243")[0]
    assert pos(d) == at(src, "hf") and "safetensors" in d.hint
    ok = TEXT + f'model m {{ pretrained = "{MINILM}", task = classify(labels = 2) }}\n' + train("m", "s") + \
        "export e { from = t, format = hf, verify = true }\n"
    assert errors(lint(ok)) == []


def test_distributed_mode_the_install_cannot_honour_is_ftp244(monkeypatch):
    from ftdsl import capabilities

    src = IRIS + "model m { arch = mlp(), task = classify(labels = 3) }\n" + train("m", "d", ", distributed = ddp")
    assert errors(lint(src)) == []  # the engine implements ddp (train_parallel)
    monkeypatch.setitem(capabilities.DISTRIBUTED, "ddp", False)
    d = only(lint(src), "FTP244")[0]
    assert pos(d) == at(src, "ddp") and "supported: none" in d.hint


# --- issue 6: bounds in the schema ----------------------------------------------------------------


@pytest.mark.parametrize("value, needle", [
    ("arch = mlp(hidden = [64, 1000000000])", "1000000000"),
    ("arch = mlp(hidden = [99999999999999999999999999999])", "99999999999999999999999999999"),
    ("arch = cnn(channels = [16, 100000])", "100000"),
    ("arch = transformer(heads = 5000)", "5000"),
    ("arch = rnn(layers = 2000)", "2000"),
])
def test_absurd_architecture_sizes_are_ftp203_at_the_element(value, needle):
    src = IRIS + f"model m {{ {value}, task = classify(labels = 3) }}\n" + train("m", "d")
    d = only(lint(src), "FTP203")[0]
    assert pos(d) == at(src, needle)


@pytest.mark.parametrize("attr, needle", [
    ("epochs = 1000000000", "1000000000"),
    ("epochs = 1, batch = 100000000", "100000000"),
    ("epochs = 1, optimizer = adamw(lr = 100)", "100"),
    ("epochs = 1, optimizer = sgd(lr = 0.1, weight_decay = 1e6)", "1e6"),
    ("epochs = 1, max_length = 10000000", "10000000"),
    ("epochs = 1, schedule = cosine(warmup = 1e12)", "1e12"),
])
def test_absurd_training_values_are_ftp203_at_their_span(attr, needle):
    src = IRIS + "model m { arch = mlp(), task = classify(labels = 3) }\n" + \
        f"train t {{ model = m, data = d, {attr.replace('epochs = 1, ', '') if attr.startswith('epochs = 1,') else attr}" \
        f"{', epochs = 1' if attr.startswith('epochs = 1,') else ''} }}\n"
    d = only(lint(src), "FTP203")[0]
    assert pos(d) == at(src, needle)


def test_overflowing_values_are_errors_at_their_spans():
    src = IRIS + "model m { arch = mlp(), task = classify(labels = 3) }\n" + \
        "train t { model = m, data = d, epochs = 1e999, optimizer = adamw(lr = 1e999) }\n"
    errs = [d for d in lint(src) if d.severity == "error"]
    lines_cols = {pos(d) for d in errs}
    assert at(src, "1e999") in lines_cols and at(src, "1e999", 1) in lines_cols


def test_too_many_layers_in_a_list_is_ftp203():
    src = IRIS + "model m { arch = mlp(hidden = [" + ", ".join(["4"] * 1025) + "]), task = classify(labels = 3) }\n" + \
        train("m", "d")
    d = only(lint(src), "FTP203")[0]
    assert "at most 1024" in d.message


def test_ranges_appear_in_the_generated_reference():
    from ftdsl.docgen import reference_markdown

    ref = reference_markdown()
    assert "an integer in [1, 100000]" in ref  # epochs
    assert "a list of integers in [1, 65536]" in ref  # mlp hidden
    assert "| `valid.loss`" not in ref and "| `loss` | `classify`, `regress`, `causal_lm`, `seq2seq`, `token_classify` | lower (`min`)" in ref


# --- through the CLI: lint no longer says "All checks passed" ------------------------------------


def test_lint_cli_reports_the_static_errors(tmp_path, capsys):
    p = tmp_path / "p.ftp"
    p.write_text("ftp 1\n" + DIGITS + "model m { arch = transformer(), task = classify(labels = 3) }\n"
                 + train("m", "d"))
    assert main(["lint", str(p)]) == 1
    out = capsys.readouterr()
    text = out.out + out.err
    assert "FTP240" in text and "FTP241" in text and "All checks passed" not in text


def test_no_modality_guess_for_a_data_block_with_a_misspelled_attribute():
    src = ('data s {\n  source = csv("x.csv")\n  txt = "text"\n}\n'
           f'model m {{ pretrained = "{MINILM}", task = classify(labels = 2) }}\n' + train("m", "s"))
    codes = [d.code for d in lint(src)]
    assert "FTP201" in codes and "FTP240" not in codes


def test_a_long_chain_of_stages_is_checked_without_recursion():
    """model_task/training_data recursed once per chained stage: RecursionError (exit 70) past ~1,000."""
    n = 2500
    src = IRIS + "model m { arch = mlp(), task = classify(labels = 3) }\ntrain t0 { model = m, data = d, epochs = 1 }\n"
    src += "".join(f'train t{i} {{ model = t{i - 1}, data = d, epochs = 1, early_stop = {{ metric = "valid.f1" }} }}\n'
                   for i in range(1, n))
    src += f"evaluate r {{ models = [t{n - 1}], data = d.test }}\nexport e {{ from = t{n - 1}, format = hf, verify = true }}\n"
    codes = [d.code for d in lint(src) if d.severity == "error"]
    assert codes == ["FTP243"]  # found through 2,500 stages back to the `arch` model


def test_argument_combinations_a_constructor_cannot_build_are_errors():
    src = IRIS + "model m { arch = transformer(dim = 64, heads = 5), task = classify(labels = 3) }\n"
    d = only(lint(src), "FTP203")[0]
    assert pos(d) == at(src, "5") and "`heads = 4`" in d.hint  # nn.MultiheadAttention asserted at run time
    src = "data d { source = synthetic(classes = 100, features = 4) }\n"
    d = only(lint(src), "FTP203")[0]
    assert pos(d) == at(src, "100") and "features = 7" in d.hint  # sklearn refused it at run time
    src = 'data d {\n  source = sklearn("iris")\n  text = "t"\n}\nmodel m { arch = rnn(), task = classify(labels = 3) }\n' \
        + train("m", "d")
    ds = lint(src)
    assert [pos(d) for d in ds if d.code == "FTP240"] == [at(src, '"t"')]


def test_lora_with_fsdp_is_ftp244_at_lint():
    src = IRIS + "model m { arch = mlp(), task = classify(labels = 3) }\n" + \
        train("m", "d", ", distributed = fsdp, lora = lora()")
    d = only(lint(src), "FTP244")[0]
    assert pos(d) == at(src, "fsdp") and d.hint == "use `distributed = ddp`"
    assert errors(lint(src.replace("fsdp", "ddp"))) == []
