"""`vidcc inspect MODEL`: op histogram, parameters, bytes, FLOPs estimate, precision map."""

from __future__ import annotations

from vidcc.cli._output import console, print_json


def add_parser(sub):
    p = sub.add_parser("inspect", help="summarize a model: ops, params, bytes, FLOPs, precision")
    p.add_argument("model", help="an .onnx file or a zoo name (e.g. svd-unet:tiny)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.table import Table

    from vidcc import model, stats

    graph, source = model.load(args.model)
    feeds = source.sample_inputs()
    costed = stats.bind_input_shapes(graph, feeds) if feeds else graph
    info = stats.summarize(graph)
    cost = stats.summarize(costed)
    info.update(macs=cost["macs"], flops=cost["flops"], nodes_with_unknown_cost=cost["nodes_with_unknown_cost"],
                model=str(source.path), flops_at=({k: list(v.shape) for k, v in feeds.items()} if feeds else None))
    if args.json:
        print_json(info)
        return 0
    console.print(f"[bold]{source.path}[/]  {info['nodes']} nodes, {info['params']:,} params, "
                  f"{info['weight_bytes'] / 2**20:.1f} MiB weights, {info['flops'] / 1e9:.3f} GFLOP"
                  + (f" at {info['flops_at']}" if feeds else "")
                  + (f" ({info['nodes_with_unknown_cost']} nodes of unknown cost)" if info["nodes_with_unknown_cost"] else ""),
                  highlight=False)
    io = Table(title="inputs / outputs")
    io.add_column("name")
    io.add_column("kind")
    io.add_column("type")
    for k, v in info["inputs"].items():
        io.add_row(k, "input", v)
    for k, v in info["outputs"].items():
        io.add_row(k, "output", v)
    console.print(io)
    ops = Table(title="ops")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, n in info["ops"].items():
        ops.add_row(op, str(n))
    console.print(ops)
    console.print("precision: " + ", ".join(f"{k}={v}" for k, v in info["precision"].items()), highlight=False)
    return 0
