"""Initializer deduplication."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass

from vidcc.ir import Graph
from vidcc.pass_manager import Pass, PassContext, PassResult


@dataclass(frozen=True)
class DedupConstants(Pass):
    """Make readers of identical initializers share one.

    Rewrite cases:
    - constants with equal dtype, shape and bytes: every reader of a duplicate reads the first one
      and the duplicate is dropped (graph inputs and outputs keep their names);
    - only constants that share dtype, shape and size are hashed at all, and hashing streams the
      raw bytes in chunks, so a memory-mapped weight is never copied whole.
    """

    name = "dedup-constants"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        by_header: dict[tuple, list[str]] = defaultdict(list)
        for name, c in graph.constants.items():
            if name in graph.inputs or name in graph.outputs:
                continue
            by_header[(c.dtype, c.shape)].append(name)
        merged = saved = 0
        for names in by_header.values():
            if len(names) < 2:
                continue
            first: dict[str, str] = {}
            for name in names:
                digest = _digest(graph, name)
                keep = first.setdefault(digest, name)
                if keep == name:
                    continue
                graph.replace_all_uses(name, keep)
                saved += graph.constants[name].nbytes
                del graph.constants[name]
                merged += 1
        return PassResult(bool(merged), {"merged": merged, "bytes_saved": saved} if merged else {})


def _digest(graph: Graph, name: str) -> str:
    h = hashlib.blake2b(digest_size=20)
    for piece in graph.constants[name].raw_chunks():
        h.update(piece)
    return h.hexdigest()


PASSES = [DedupConstants]
