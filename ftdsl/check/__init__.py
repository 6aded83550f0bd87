"""IR -> diagnostics. `RULES` is the ordered tuple of checks; each is a plain function of a context.

Adding a rule: write a generator function in `ftdsl/check/rules/` that yields `Diagnostic`s,
register its code in `ftdsl/diagnostics/codes.py`, and add it to `RULES`.
"""

from __future__ import annotations

from ftdsl.check.context import CheckContext
from ftdsl.check.rules import compat, generate, hygiene, inputs, metrics, order, prune, references, safety, structure, sweep
from ftdsl.check.rules import peft, tokenizer, tracking
from ftdsl.diagnostics import Diagnostic
from ftdsl.ir.nodes import Program

RULES = (
    structure.no_stages,
    structure.conflicting_attributes,
    structure.split_fractions,
    references.reference_types,
    references.cycles,
    order.stage_order,
    metrics.metrics_produced,
    generate.generation_applies,
    compat.data_columns,
    compat.arch_task,
    compat.token_task_loss,
    tokenizer.from_scratch_vocabulary,
    compat.modality_and_labels,
    compat.quantize_support,
    compat.export_support,
    compat.install_capabilities,
    compat.constructor_constraints,
    prune.structured_support,
    prune.vocab_needs_data,
    prune.hf_export_after_head_pruning,
    peft.adapter_targets,
    peft.prefix_support,
    peft.gradient_checkpointing,
    peft.load_in,
    peft.adapter_exports,
    sweep.sweep_over_paths,
    safety.trust_remote_code,
    safety.pickle_weights,
    safety.output_paths,
    inputs.input_files,
    inputs.pretrained_folders,
    hygiene.unused_blocks,
    hygiene.unused_params,
    hygiene.export_without_verify,
    hygiene.fp16_on_cpu,
    tracking.trackers_installed,
)


def check(program: Program) -> tuple[list[Diagnostic], CheckContext]:
    ctx = CheckContext.build(program)
    out: list[Diagnostic] = []
    for rule in RULES:
        out.extend(rule(ctx))
    return out, ctx
