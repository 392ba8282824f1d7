"""`vidcc diff A.onnx B.onnx`: what differs between two models, e.g. before and after another tool."""

from __future__ import annotations

from vidcc.cli._output import console, print_json


def add_parser(sub):
    p = sub.add_parser("diff", help="compare two ONNX models node by node")
    p.add_argument("a", help="the first .onnx file (before)")
    p.add_argument("b", help="the second .onnx file (after)")
    p.add_argument("--json", action="store_true", help="print the vidcc.explain/1 report (kind diff; docs/explain.md)")
    p.add_argument("--html", metavar="FILE", help="write a standalone HTML page with drawings of each change")
    p.set_defaults(func=run)


def run(args) -> int:
    from vidcc.diff import diff_files

    report, nodes = diff_files(args.a, args.b)
    if args.html:
        from vidcc.report_html import render_diff, write_page

        write_page(args.html, render_diff(report, nodes))
    if args.json:
        print_json(report)
    else:
        from vidcc.cli._explain_view import print_diff

        print_diff(report)
        if args.html:
            console.print(f"wrote {args.html}", highlight=False, markup=False, soft_wrap=True)
    return 0
