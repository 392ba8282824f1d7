"""`vidcc zoo list` and `vidcc zoo export NAME[:SIZE] -o FILE.onnx`.

`export -o X.onnx` writes X.onnx, X.inputs.npz (sample inputs, named as the graph inputs) and
X.reference.npz (torch outputs, named as the graph outputs); full sizes also write X.onnx.data.
`--static frames=5,height=60,width=104` fixes those latent dims in the graph (and the sample inputs) at
those sizes; dims not named stay dynamic.
"""

from __future__ import annotations

from vidcc.cli._output import console, err_console, print_json


def add_parser(sub):
    p = sub.add_parser("zoo", help="built-in video-diffusion models: list them, export them to ONNX")
    zsub = p.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND")
    zsub.required = False  # a bare `vidcc zoo` lists

    lp = zsub.add_parser("list", help="the zoo's models, sizes, exporters and parameter counts")
    lp.add_argument("--json", action="store_true", help="machine-readable output")
    lp.set_defaults(func=run_list)

    ep = zsub.add_parser("export", help="export NAME[:SIZE] (tiny, small, full) to an ONNX file",
                         description="Export a zoo model. Writes FILE.onnx plus FILE.inputs.npz (sample inputs) "
                                     "and FILE.reference.npz (torch outputs) beside it, and FILE.onnx.data "
                                     "for full sizes. Exports are cached under $VIDCC_CACHE_DIR/zoo "
                                     "(default ~/.cache/vidcc/zoo).")
    ep.add_argument("name", metavar="NAME[:SIZE]", help="e.g. svd-unet or svd-unet:small (size defaults to tiny)")
    ep.add_argument("-o", "--output", required=True, metavar="FILE.onnx", help="where to write the model")
    ep.add_argument("--exporter", choices=("legacy", "dynamo"),
                    help="legacy = TorchScript (opset 17), dynamo = torch.export (opset 18+); default per model")
    ep.add_argument("--opset", type=int, help="ONNX opset (legacy 14-20, dynamo 18-23)")
    ep.add_argument("--weights", metavar="DIR",
                    help="a local diffusers checkpoint to load instead of random weights (or $VIDCC_ZOO_WEIGHTS)")
    ep.add_argument("--static", metavar="DIM=N[,DIM=N]",
                    help="export these latent dims (frames, height, width) static at these sizes, e.g. "
                         "frames=5,height=60,width=104; sample inputs are built there (default: all dynamic)")
    ep.add_argument("--force", action="store_true", help="re-export even if cached")
    ep.add_argument("--json", action="store_true", help="machine-readable output")
    ep.set_defaults(func=run_export)
    p.set_defaults(func=run_list)


def _human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}" if unit == "B" else f"{n / scale:.1f}{unit}"
    return str(n)


def run_list(args) -> int:
    from vidcc import zoo

    rows = [{"name": e.name, "description": e.description, "sizes": list(e.sizes), "exporters": list(e.exporters),
             "default_exporter": e.default_exporter, "params": {s: e.params[s] for s in e.sizes},
             "notes": e.notes} for e in zoo.ENTRIES.values()]
    if getattr(args, "json", False):
        print_json(rows)
        return 0
    from rich.table import Table

    table = Table(title="vidcc zoo  (NAME[:SIZE]; size defaults to tiny)")
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("sizes: params")
    table.add_column("exporters")
    for row in rows:
        sizes = "\n".join(f"{s}: {_human(n)}" for s, n in row["params"].items())
        exporters = ", ".join(f"[bold]{x}[/]" if x == row["default_exporter"] else x for x in row["exporters"])
        table.add_row(row["name"], row["description"], sizes, exporters)
    console.print(table)
    console.print("default exporter in bold; `vidcc zoo export NAME[:SIZE] -o FILE.onnx`", highlight=False)
    return 0


def run_export(args) -> int:
    from vidcc import zoo

    static = zoo.parse_static(args.static)  # a bad --static errors before the spinner starts
    with err_console.status(f"exporting {args.name}", spinner="dots") as spinner:
        exp = zoo.export(args.name, exporter=args.exporter, opset=args.opset, weights=args.weights,
                         force=args.force, static=static, progress=lambda message: spinner.update(message))
        spinner.update(f"copying to {args.output}")
        written = zoo.copy_export(exp, args.output)
    meta = exp.meta
    result = {"model": exp.spec, "exporter": exp.exporter, "opset": exp.opset, "static": exp.static,
              "cached": exp.cached,
              "nodes": meta.get("nodes"), "params": meta.get("params"), "inputs": meta.get("inputs"),
              "outputs": meta.get("outputs"), "files": {k: str(v) for k, v in written.items()},
              "cache": str(exp.directory)}
    if args.json:
        print_json(result)
        return 0
    how = "from cache" if exp.cached else f"in {sum(meta.get('timings', {}).values()):.1f} s"
    fixed = "".join(f", {dim}={value} static" for dim, value in exp.static.items())
    console.print(f"[bold]{exp.spec}[/] ({exp.exporter}, opset {exp.opset}{fixed}, {meta.get('nodes')} nodes, "
                  f"{meta.get('params', 0):,} params) {how}", highlight=False)
    for role, path in written.items():
        console.print(f"  wrote {role:9} {path}", highlight=False)
    return 0
