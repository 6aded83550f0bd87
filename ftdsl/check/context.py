"""What every rule may look at: the program plus its graph, computed once."""

from __future__ import annotations

from dataclasses import dataclass

from ftdsl.check import graph
from ftdsl.ir.nodes import Program


@dataclass
class CheckContext:
    program: Program
    edges: list
    order: list[str]
    cycles: list[list[str]]
    types: dict[str, str]

    @classmethod
    def build(cls, program: Program) -> "CheckContext":
        es = graph.edges(program)
        order, cycles = graph.topo_order(program, es)
        return cls(program, es, order, cycles, graph.artifact_types(program, order))
