"""Depth-first walk of a dependency graph: an order and the cycles. No recursion (a 10,000-stage
chain or 10,000 chained params must not hit the recursion limit). The checker orders stages with it
(`check/graph.py`), the resolver finds param cycles (`ir/resolve.py`)."""

from __future__ import annotations

from typing import Callable, Hashable, Iterable, Sequence, TypeVar

N = TypeVar("N", bound=Hashable)
E = TypeVar("E")

__all__ = ["walk"]


def walk(roots: Iterable[N], successors: Callable[[N], Sequence[E]],
         target: Callable[[E], N] = lambda e: e) -> tuple[list[N], list[tuple[list[N], E]]]:
    """Visit every node reachable from ``roots`` (in their order), following ``successors(node)``
    (edges; ``target(edge)`` is the node an edge leads to).

    Returns the nodes in post-order (each after everything it leads to: with dependencies as
    successors, a topological order) and every cycle met, as ``(nodes on it, in order, starting
    with the node the closing edge leads to; the closing edge)``.
    """
    state: dict[N, int] = {}  # 1: on the current path, 2: done
    order: list[N] = []
    cycles: list[tuple[list[N], E]] = []
    for root in roots:
        if state.get(root):
            continue
        stack: list[tuple[N, int]] = [(root, 0)]
        path: list[N] = []
        while stack:
            node, i = stack.pop()
            if i == 0:
                if state.get(node):
                    continue
                state[node] = 1
                path.append(node)
            edges = successors(node)
            if i < len(edges):
                stack.append((node, i + 1))
                nxt = target(edges[i])
                if state.get(nxt) == 1:
                    cycles.append((path[path.index(nxt):], edges[i]))
                elif not state.get(nxt):
                    stack.append((nxt, 0))
            else:
                state[node] = 2
                path.pop()
                order.append(node)
    return order, cycles
