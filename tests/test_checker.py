"""Static semantics (SPEC §5; reliability.md §8 A, B9-B11, B13-B16): what `lint` finds in a file that parses.

Each test compiles a small pipeline in-process with `ftdsl.frontend.compile_pipeline` and checks
the code, the span it points at (line, column of the offending text) and, where it helps, the
hint and the secondary labels. Suppression comments are applied as `lint` applies them.
"""

from __future__ import annotations

import pytest

from ftdsl.diagnostics.codes import CODES
from ftdsl.frontend import compile_pipeline

BASE = 'data d { source = sklearn("iris") }\nmodel m { arch = mlp(), task = classify(labels = 3) }\n'
TRAIN = "train t { model = m, data = d, epochs = 1 }\n"


def lint(text: str, overrides=()):
    c = compile_pipeline("p.ftp", overrides, text=text)
    return c.diagnostics  # suppressions are applied by the front end itself


def only(diags, code):
    found = [d for d in diags if d.code == code]
    assert found, f"no {code} in {[(d.code, d.message) for d in diags]}"
    return found


def at(text: str, needle: str, occurrence: int = 0) -> tuple[int, int]:
    """1-based (line, col) of the `occurrence`-th `needle` in `text`."""
    i = -1
    for _ in range(occurrence + 1):
        i = text.index(needle, i + 1)
    return text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1


def pos(d) -> tuple[int, int]:
    return d.span.line, d.span.col


def test_clean_pipeline_has_no_diagnostics():
    assert lint(BASE + TRAIN) == []


# --- B9: unknown kinds, attributes, arguments, constructors -------------------------------------------

def test_unknown_block_kind_is_ftp200_with_did_you_mean():
    src = BASE + "trian t { model = m, data = d, epochs = 1 }\n"
    d = only(lint(src), "FTP200")[0]
    assert d.severity == "error"
    assert pos(d) == at(src, "trian")
    assert d.hint == "did you mean `train`?"
    assert any("block kinds:" in n for n in d.notes)


def test_unknown_attribute_is_ftp201_with_did_you_mean_and_valid_list():
    src = BASE + "train t { model = m, data = d, epochs = 1, bacth = 8 }\n"
    d = only(lint(src), "FTP201")[0]
    assert pos(d) == at(src, "bacth")
    assert (d.span.end_col - d.span.col) == len("bacth")
    assert d.hint == "did you mean `batch`?"
    assert "batch" in d.notes[0] and "epochs" in d.notes[0]


def test_unknown_constructor_argument_is_ftp201():
    src = BASE + "train t { model = m, data = d, epochs = 1, optimizer = adamw(lr = 1e-3, wd = 0.1) }\n"
    d = only(lint(src), "FTP201")[0]
    assert pos(d) == at(src, "wd")
    assert "adamw" in d.message
    assert "weight_decay" in d.notes[0]


def test_too_many_positional_arguments_is_ftp201():
    src = BASE + "train t { model = m, data = d, epochs = 1, optimizer = adam(1e-3, 0.0, 7) }\n"
    d = only(lint(src), "FTP201")[0]
    assert pos(d) == at(src, "7")


def test_unknown_dict_key_is_ftp201():
    src = BASE + 'train t { model = m, data = d, epochs = 1, early_stop = { metrc = "train.loss" } }\n'
    d = only(lint(src), "FTP201")[0]
    assert pos(d) == at(src, "metrc")
    assert d.hint == "did you mean `metric`?"


def test_unknown_constructor_is_ftp215_with_did_you_mean():
    src = BASE + "train t { model = m, data = d, epochs = 1, optimizer = adamx(lr = 1e-3) }\n"
    d = only(lint(src), "FTP215")[0]
    assert pos(d) == at(src, "adamx")
    assert "adamw" in d.hint


def test_constructor_of_the_wrong_family_is_ftp202():
    src = BASE + "train t { model = m, data = d, epochs = 1, optimizer = cosine() }\n"
    d = only(lint(src), "FTP202")[0]
    assert pos(d) == at(src, "cosine")
    assert "schedule" in d.message


def test_constructor_family_messages_use_the_right_article():
    src = BASE + "train t { model = m, data = d, epochs = 1, optimizer = cosine() }\n"
    d = only(lint(src), "FTP202")[0]
    assert "a optimizer" not in d.message and "a optimizer" not in d.label


def test_missing_required_attribute_is_ftp208():
    src = BASE + "train t { data = d, epochs = 1 }\n"
    d = only(lint(src), "FTP208")[0]
    assert "`model`" in d.message
    assert pos(d) == at(src, "t {")


def test_missing_required_constructor_argument_is_ftp208():
    src = BASE + TRAIN + "prune p { from = t, method = magnitude() }\n"
    d = only(lint(src), "FTP208")[0]
    assert "amount" in d.message


# --- B10: types and ranges, at the span ----------------------------------------------------------------

def test_negative_epochs_is_ftp203_at_the_value():
    src = BASE + "train t { model = m, data = d, epochs = -1 }\n"
    d = only(lint(src), "FTP203")[0]
    assert pos(d) == at(src, "-1")
    assert d.span.end_col - d.span.col == 2
    assert "[1, 100000]" in d.message


def test_string_learning_rate_is_ftp202_at_the_value():
    src = BASE + 'train t { model = m, data = d, epochs = 1, optimizer = adamw(lr = "fast") }\n'
    d = only(lint(src), "FTP202")[0]
    assert pos(d) == at(src, '"fast"')
    assert d.span.end_col - d.span.col == len('"fast"')
    assert "number" in d.message


def test_quoted_number_gets_remove_the_quotes_hint():
    src = BASE + 'train t { model = m, data = d, epochs = "3" }\n'
    d = only(lint(src), "FTP202")[0]
    assert d.hint == "remove the quotes: 3"


def test_float_for_an_integer_is_ftp202():
    src = BASE + "train t { model = m, data = d, epochs = 1.5 }\n"
    d = only(lint(src), "FTP202")[0]
    assert pos(d) == at(src, "1.5")


@pytest.mark.parametrize("attr,value", [
    ("optimizer = adamw(lr = 0)", "0"),
    ("optimizer = sgd(lr = -0.1)", "-0.1"),
    ("batch = 0", "0"),
    ("accumulate = 0", "0"),
    ("schedule = step(every = 0)", "0"),
])
def test_out_of_range_values_are_ftp203(attr, value):
    src = BASE + f"train t {{ model = m, data = d, epochs = 1, {attr} }}\n"
    d = only(lint(src), "FTP203")[0]
    assert pos(d) == at(src, value, src.count(value, 0, src.index(attr)))


@pytest.mark.parametrize("amount", ["0", "1", "1.5", "-0.2"])
def test_prune_amount_outside_open_unit_interval_is_ftp203(amount):
    src = BASE + TRAIN + f"prune p {{ from = t, method = magnitude(amount = {amount}) }}\n"
    d = only(lint(src), "FTP203")[0]
    assert "(0, 1)" in d.message


def test_enum_given_as_unknown_string_is_ftp203_with_did_you_mean():
    src = BASE + 'train t { model = m, data = d, epochs = 1, precision = "bf61" }\n'
    d = only(lint(src), "FTP203")[0]
    assert "bf16" in (d.hint or "")


def test_split_fractions_over_one_is_ftp203():
    src = ('data d { source = sklearn("iris"), split = { train = 0.8, valid = 0.3 } }\n'
           "model m { arch = mlp(), task = classify(labels = 3) }\n" + TRAIN)
    d = only(lint(src), "FTP203")[0]
    assert "1.1" in d.message


def test_a_bad_epochs_value_is_not_also_reported_as_missing():
    src = BASE + "train t { model = m, data = d, epochs = -1 }\n"
    assert [d.code for d in lint(src)] == ["FTP203"]


# --- B11: duplicates, references, cycles, stage order -------------------------------------------------

def test_duplicate_block_is_ftp206_with_first_here_label():
    src = BASE + TRAIN + TRAIN
    d = only(lint(src), "FTP206")[0]
    assert pos(d) == at(src, "t {", 1)
    assert [(s.message, s.span.line) for s in d.secondary] == [("first here", 3)]


def test_duplicate_param_is_ftp206_with_first_here_label():
    src = "param e = 1\nparam e = 2\n" + BASE + "train t { model = m, data = d, epochs = e }\n"
    d = only(lint(src), "FTP206")[0]
    assert pos(d) == (2, 7)
    assert [(s.message, s.span.line, s.span.col) for s in d.secondary] == [("first here", 1, 7)]


def test_duplicate_attribute_is_ftp206_with_first_here_label():
    src = BASE + "train t { model = m, data = d, epochs = 1,\n  epochs = 2 }\n"
    d = only(lint(src), "FTP206")[0]
    assert pos(d) == (4, 3)
    assert [(s.message, s.span.line) for s in d.secondary] == [("first here", 3)]


def test_duplicate_constructor_argument_and_dict_key_are_ftp206():
    src = BASE + ('train t { model = m, data = d, epochs = 1, optimizer = adamw(lr = 1e-3, lr = 1e-4),\n'
                  '  early_stop = { metric = "train.loss", metric = "train.loss" } }\n')
    ds = only(lint(src), "FTP206")
    assert len(ds) == 2
    assert all(d.secondary and d.secondary[0].message == "first here" for d in ds)


def test_param_and_block_with_one_name_is_ftp206():
    src = "param d = 1\n" + BASE + TRAIN
    d = only(lint(src), "FTP206")[0]
    assert d.secondary[0].message == "block here"


def test_two_pipeline_blocks_is_ftp214():
    src = "pipeline a { }\npipeline b { }\n" + BASE + TRAIN
    d = only(lint(src), "FTP214")[0]
    assert pos(d) == (2, 1)
    assert d.secondary[0].span.line == 1


def test_undefined_reference_is_ftp204_with_did_you_mean():
    src = BASE + "train t { model = mm, data = d, epochs = 1 }\n"
    d = only(lint(src), "FTP204")[0]
    assert pos(d) == at(src, "mm")
    assert d.hint == "did you mean `m`?"


def test_undefined_split_is_ftp204():
    src = BASE + TRAIN + "evaluate e { models = [t], data = d.tset }\n"
    d = only(lint(src), "FTP204")[0]
    assert pos(d) == at(src, "d.tset")
    assert "test" in d.hint


def test_undefined_param_in_a_constructor_is_ftp204():
    src = BASE + "train t { model = m, data = d, epochs = 1, optimizer = adamw(lr = learning_rate) }\n"
    d = only(lint(src), "FTP204")[0]
    assert pos(d) == at(src, "learning_rate")


@pytest.mark.parametrize("stages,cycle", [
    ("prune a { from = b, method = magnitude(amount = 0.5) }\n"
     "prune b { from = a, method = magnitude(amount = 0.5) }\n", {"a", "b"}),
    ("prune a { from = a, method = magnitude(amount = 0.5) }\n", {"a"}),
    ("prune a { from = c, method = magnitude(amount = 0.5) }\n"
     "prune b { from = a, method = magnitude(amount = 0.5) }\n"
     "prune c { from = b, method = magnitude(amount = 0.5) }\n", {"a", "b", "c"}),
])
def test_cycles_are_ftp205_naming_every_stage(stages, cycle):
    ds = only(lint(BASE + TRAIN + stages), "FTP205")
    assert len(ds) == 1
    assert set(ds[0].message.split(": ", 1)[1].split(" -> ")) == cycle


def test_param_referring_to_itself_is_ftp205():
    src = "param a = a\n" + BASE + "train t { model = m, data = d, epochs = a }\n"
    only(lint(src), "FTP205")


def test_wrong_artifact_type_is_ftp209():
    src = BASE + "train t { model = d, data = d, epochs = 1 }\n"
    d = only(lint(src), "FTP209")[0]
    assert pos(d) == at(src, "d,")
    assert "TorchModel" in d.message and "Dataset" in d.message


def test_whole_dataset_where_a_split_is_needed_is_ftp209():
    src = BASE + TRAIN + "evaluate e { models = [t], data = d }\n"
    d = only(lint(src), "FTP209")[0]
    assert "d.test" in d.hint


def test_quantize_then_export_onnx_is_ftp207_suggesting_the_other_order():
    src = BASE + TRAIN + ("quantize q { from = t, method = dynamic() }\n"
                          "export e { from = q, format = onnx(), verify = true }\n")
    d = only(lint(src), "FTP207")[0]
    assert pos(d) == at(src, "q,")
    assert "export first" in d.hint and "quantize q { from = e" in d.hint


def test_export_onnx_then_quantize_is_fine():
    src = BASE + TRAIN + ("export e { from = t, format = onnx(), verify = true }\n"
                          "quantize q { from = e, method = dynamic() }\n")
    assert lint(src) == []


def test_training_a_quantized_model_is_ftp207():
    src = BASE + TRAIN + ("quantize q { from = t, method = dynamic() }\n"
                          "train t2 { model = q, data = d, epochs = 1 }\n")
    only(lint(src), "FTP207")


# --- metrics (SPEC §5) ------------------------------------------------------------------------------

def test_early_stop_on_valid_without_a_valid_split_is_ftp210():
    src = ('data d { source = sklearn("iris"), split = { train = 0.8, test = 0.2 } }\n'
           "model m { arch = mlp(), task = classify(labels = 3) }\n"
           'train t { model = m, data = d, epochs = 1, early_stop = { metric = "valid.accuracy" } }\n')
    d = only(lint(src), "FTP210")[0]
    assert pos(d) == at(src, '"valid.accuracy"')
    assert "no `valid` split" in d.message


def test_early_stop_on_valid_with_default_splits_is_fine():
    src = BASE + 'train t { model = m, data = d, epochs = 1, early_stop = { metric = "valid.accuracy" } }\n'
    assert lint(src) == []


def test_sweep_metric_without_a_valid_split_is_ftp210():
    src = ('data d { source = sklearn("iris"), split = { train = 0.9, test = 0.1 } }\n'
           "model m { arch = mlp(), task = classify(labels = 3) }\n" + TRAIN +
           'sweep s { target = t, over = { "optimizer.lr" = [1e-3, 1e-4] }, metric = "valid.accuracy" }\n')
    only(lint(src), "FTP210")


def test_early_stop_on_the_test_split_is_ftp210():
    src = BASE + 'train t { model = m, data = d, epochs = 1, early_stop = { metric = "test.accuracy" } }\n'
    d = only(lint(src), "FTP210")[0]
    assert "leaks" in d.hint


def test_accuracy_of_a_regression_model_is_ftp232():
    src = ('data d { source = sklearn("iris") }\nmodel m { arch = mlp(), task = regress() }\n' + TRAIN +
           "evaluate e { models = [t], data = d.test, metrics = [accuracy] }\n")
    d = only(lint(src), "FTP232")[0]
    assert pos(d) == at(src, "accuracy")


# --- B13-B15: safety warnings ---------------------------------------------------------------------------

def test_trust_remote_code_without_revision_is_ftp301_warning():
    src = ('data d { source = sklearn("iris") }\n'
           'model m { pretrained = "org/model", task = classify(labels = 3), trust_remote_code = true }\n' + TRAIN)
    d = only(lint(src), "FTP301")[0]
    assert d.severity == "warning"
    assert pos(d) == at(src, "true")
    assert "revision" in d.hint


def test_pickle_weights_are_ftp302():
    src = ('data d { source = sklearn("iris") }\n'
           'model m { pretrained = "weights/model.bin", task = classify(labels = 3) }\n' + TRAIN)
    d = only(lint(src), "FTP302")[0]
    assert pos(d) == at(src, '"weights/model.bin"')


@pytest.mark.parametrize("path", ["../x", "/etc/x", "a/../../x", "C:\\\\x", "a\\\\..\\\\x"])
def test_output_path_escaping_the_pipeline_folder_is_ftp303(path):
    src = BASE + TRAIN + f'export e {{ from = t, path = "{path}", verify = true }}\n'
    d = only(lint(src), "FTP303")[0]
    assert pos(d) == at(src, f'"{path}"')


def test_percent_encoded_dots_are_a_literal_folder_name():
    src = BASE + TRAIN + 'export e { from = t, path = "%2e%2e/x", verify = true }\n'
    assert lint(src) == []


def test_pipeline_out_outside_the_folder_is_ftp303():
    src = 'pipeline p { out = "../elsewhere" }\n' + BASE + TRAIN
    only(lint(src), "FTP303")


# --- hygiene warnings ---------------------------------------------------------------------------------

def test_unused_data_and_model_blocks_are_ftp220():
    ds = only(lint(BASE), "FTP220")
    assert {d.message.split("`")[1] for d in ds} == {"d", "m"}


def test_unused_param_is_ftp221():
    d = only(lint("param lr = 1e-3\n" + BASE + TRAIN), "FTP221")[0]
    assert pos(d) == (1, 7)


def test_param_used_only_through_an_override_target_is_used():
    src = "param lr = 1e-3\n" + BASE + "train t { model = m, data = d, epochs = 1, optimizer = adamw(lr = lr) }\n"
    assert lint(src) == []


def test_export_without_verify_is_ftp230():
    d = only(lint(BASE + TRAIN + "export e { from = t }\n"), "FTP230")[0]
    assert d.severity == "warning"


def test_fp16_on_cpu_is_ftp231():
    src = "pipeline p { device = cpu }\n" + BASE + "train t { model = m, data = d, epochs = 1, precision = fp16 }\n"
    d = only(lint(src), "FTP231")[0]
    assert pos(d) == at(src, "fp16")


def test_pretrained_and_arch_together_is_ftp211():
    src = ('data d { source = sklearn("iris") }\n'
           'model m { arch = mlp(), pretrained = "x", task = classify(labels = 3) }\n' + TRAIN)
    only(lint(src), "FTP211")


def test_header_version_2_is_ftp107():
    d = only(lint("ftp 2\n" + BASE + TRAIN), "FTP107")[0]
    assert pos(d) == (1, 5)


def test_unknown_top_level_item_is_ftp106():
    d = only(lint('include "x.ftp"\n' + BASE + TRAIN), "FTP106")[0]
    assert "use" in d.hint


# --- B16: suppression comments ---------------------------------------------------------------------

def test_suppression_on_the_line_and_the_line_above_is_honoured():
    src = (BASE + TRAIN +
           "model m1 { arch = mlp(), task = classify(labels = 3) }  # ftdsl: ignore[FTP220]\n"
           "# ftdsl: ignore[unused-block] -- kept for the next experiment\n"
           "model m2 { arch = mlp(), task = classify(labels = 3) }\n")
    assert [d.code for d in lint(src.replace("# ftdsl", "# not"))] == ["FTP220", "FTP220"]
    assert lint(src) == []


def test_suppression_two_lines_above_does_not_apply():
    src = BASE + TRAIN + "# ftdsl: ignore[FTP220]\n\nmodel m2 { arch = mlp(), task = classify(labels = 3) }\n"
    assert sorted(d.code for d in lint(src)) == ["FTP090", "FTP220"]


def test_ignore_file_suppresses_every_occurrence():
    src = "# ftdsl: ignore-file[FTP220, FTP221]\nparam x = 1\n" + BASE
    assert lint(src) == []


def test_unknown_code_in_a_suppression_is_ftp090():
    src = BASE + TRAIN.replace("\n", "  # ftdsl: ignore[FTP999]\n")
    d = only(lint(src), "FTP090")[0]
    assert "unknown code `FTP999`" in d.message
    assert d.span.line == 3


def test_unused_suppression_is_ftp090():
    src = BASE + TRAIN.replace("\n", "  # ftdsl: ignore[FTP230]\n")
    d = only(lint(src), "FTP090")[0]
    assert "matches no diagnostic" in d.message


def test_suppression_lookalike_inside_a_string_is_not_a_comment():
    src = BASE + ('train t { model = m, data = d, epochs = 1 }\n'
                  'model m2 { arch = mlp(), task = classify(labels = 3), pretrained = "# ftdsl: ignore[FTP220]" }\n')
    assert "FTP220" in [d.code for d in lint(src)]


def test_a_syntax_error_cannot_be_suppressed():
    src = BASE + "train t { model = m, data = d, epochs = @ }  # ftdsl: ignore[FTP102]\n"
    assert "FTP102" in [d.code for d in lint(src)]


def test_every_emitted_code_is_registered():
    srcs = [BASE, BASE + TRAIN + TRAIN, "trian x { }", "param a = a\n", BASE + "train t { bogus = 1 }\n"]
    for s in srcs:
        for d in lint(s):
            assert d.code in CODES, d
            assert d.severity == CODES[d.code].severity or d.code == "FTP090"



def test_evaluate_of_an_untrained_model_block_is_ftp209_at_lint():
    """The engine refuses an untrained model in `evaluate` (FTP510 at run time); lint says so first."""
    text = "ftp 1\n" + BASE + TRAIN + "evaluate r { models = [m, t], data = d.test }\n"
    d = only(lint(text), "FTP209")
    assert len(d) == 1 and "`m` is an untrained model" in d[0].message
    assert pos(d[0]) == at(text, "m, t") and "(t)" in d[0].hint
