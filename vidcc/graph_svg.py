"""Draw a small graph (one side of a changed region) as inline SVG: a layered layout of our own.

Layers are networkx's topological generations (producers above consumers); within a layer nodes are
ordered by the mean position of their producers (two barycenter sweeps), which untangles most of the
small regions explain draws. No JS, no fonts, no external files: the page stays offline.
"""

from __future__ import annotations

from html import escape
from typing import Any

import networkx as nx

BOX_W, BOX_H, GAP_X, GAP_Y, MARGIN = 150, 36, 18, 34, 8


def layout(nodes: list[dict[str, Any]], edges: list[list[Any]]) -> dict[Any, tuple[float, float]]:
    """Top-left corner of each node's box, by node id."""
    g = nx.DiGraph()
    g.add_nodes_from(n["id"] for n in nodes)
    g.add_edges_from((e[0], e[1]) for e in edges if e[0] in g and e[1] in g)
    given = {n["id"]: i for i, n in enumerate(nodes)}
    try:
        layers = [sorted(layer, key=given.__getitem__) for layer in nx.topological_generations(g)]
    except nx.NetworkXUnfeasible:  # never in a valid graph; draw one row rather than fail
        layers = [[n["id"] for n in nodes]]
    pos = {k: float(i) for layer in layers for i, k in enumerate(layer)}
    for _ in range(2):
        for layer in layers[1:]:
            _by_barycenter(layer, pos, g.predecessors)
        for layer in reversed(layers[:-1]):
            _by_barycenter(layer, pos, g.successors)
    widest = max((len(layer) for layer in layers), default=0)
    coords = {}
    for depth, layer in enumerate(layers):
        shift = (widest - len(layer)) * (BOX_W + GAP_X) / 2
        for i, k in enumerate(layer):
            coords[k] = (MARGIN + shift + i * (BOX_W + GAP_X), MARGIN + depth * (BOX_H + GAP_Y))
    return coords


def _by_barycenter(layer: list, pos: dict, neighbours) -> None:
    def key(k):
        ns = [pos[n] for n in neighbours(k) if n in pos]
        return (sum(ns) / len(ns)) if ns else pos[k]

    layer.sort(key=key)
    for i, k in enumerate(layer):
        pos[k] = float(i)


def svg(nodes: list[dict[str, Any]], edges: list[list[Any]], *, label: str = "") -> str:
    """The SVG element. Each node is a <g class="node status-..." data-prec=...> with a <title> tooltip."""
    if not nodes:
        return f'<svg class="graph empty" width="160" height="40" role="img" aria-label="{escape(label)}">' \
               '<text x="8" y="24" class="none">(nothing)</text></svg>'
    coords = layout(nodes, edges)
    width = max(x for x, _ in coords.values()) + BOX_W + GAP_X + MARGIN  # room for a lane of long edges
    height = max(y for _, y in coords.values()) + BOX_H + MARGIN
    parts = [f'<svg class="graph" width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
             f'role="img" aria-label="{escape(label)}">']
    for src, dst, tensor in edges:
        if src not in coords or dst not in coords:
            continue
        (x1, y1), (x2, y2) = coords[src], coords[dst]
        x1, y1, x2 = x1 + BOX_W / 2, y1 + BOX_H, x2 + BOX_W / 2
        if y2 - y1 > BOX_H + GAP_Y:  # spans layers: run down a lane right of the boxes it passes
            lane = max((x + BOX_W for x, y in coords.values() if y1 <= y < y2 - BOX_H), default=x1) + GAP_X / 2
            g = GAP_Y / 2
            d = (f"M{x1:.1f},{y1:.1f} C{x1:.1f},{y1 + g:.1f} {lane:.1f},{y1:.1f} {lane:.1f},{y1 + g:.1f} "
                 f"L{lane:.1f},{y2 - g:.1f} C{lane:.1f},{y2:.1f} {x2:.1f},{y2 - g:.1f} {x2:.1f},{y2:.1f}")
        else:
            mid = (y1 + y2) / 2
            d = f"M{x1:.1f},{y1:.1f} C{x1:.1f},{mid:.1f} {x2:.1f},{mid:.1f} {x2:.1f},{y2:.1f}"
        parts.append(f'<path class="edge" d="{d}">'
                     f'<title>{escape(str(tensor))}</title></path>')
    for n in nodes:
        x, y = coords[n["id"]]
        prec = n.get("precision") or "none"
        tip = f"{n['name']}\n{n['op']} #{n['id']}\nstatus: {n['status']}\nprecision: {n.get('precision') or 'unassigned'}"
        parts.append(
            f'<g class="node status-{escape(n["status"])}" data-prec="{escape(prec)}" data-name="{escape(n["name"])}" '
            f'transform="translate({x:.1f},{y:.1f})"><title>{escape(tip)}</title>'
            f'<rect width="{BOX_W}" height="{BOX_H}" rx="5"/>'
            f'<text x="{BOX_W / 2}" y="15" class="op">{escape(_clip(n["op"], 21))}</text>'
            f'<text x="{BOX_W / 2}" y="29" class="name">{escape(_clip(n["name"], 21, tail=True))}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def _clip(s: str, n: int, tail: bool = False) -> str:
    """Shorten to n characters; exporter names (/m/down_blocks.0/.../to_q/MatMul) say most at the end."""
    if len(s) <= n:
        return s
    return "\u2026" + s[-(n - 1):] if tail else s[:n - 1] + "\u2026"
