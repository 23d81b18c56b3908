"""``fxopt dump MODEL``: a model's graph before, during and after the pipeline.

MODEL is a bundled model (``minilm``, ``smollm2``), a local Hugging Face checkpoint directory (weights
loaded) or ``config.json`` (random weights), or ``module:factory`` naming a function that returns
``(model, example_inputs)`` (:mod:`fxopt.model_source` has the contract); ``--batch``/``--seq`` size the inputs.

Formats: ``text`` (the canonical printer), ``table`` (per node: op, shape, dtype, FLOPs, bytes,
precision, the pass that created it), ``summary`` (by op type), ``layers`` (one row per transformer
layer; ``--expand`` lists a layer's nodes), ``diff`` (what each pass added, removed and changed, with
the FLOPs delta), ``html`` (one self-contained page: search, zoom, pan; works offline), ``svg`` (graphviz
``dot``, when installed), ``mermaid``, ``graphml`` and ``json`` (networkx node-link).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import sympy
import torch
import torch.fx
from tabulate import tabulate

FORMATS = ("text", "table", "summary", "layers", "diff", "html", "svg", "mermaid", "graphml", "json")
FILTER_KEYS = ("op", "name", "layer", "pass", "dtype")
PICTURES = ("html", "svg", "graphml", "json", "mermaid")  # one whole graph per output


class DumpError(Exception):
    """A bad argument: printed as one line, exit code 2."""


# --------------------------------------------------------------------------------------------------
# loading


def load_model(spec: str, batch: int = 2, seq: int = 32):
    """(model, example kwargs or args) for a MODEL argument (:mod:`fxopt.model_source`)."""
    from fxopt.model_source import load_source

    source = load_source(spec)
    return source.model, source.inputs(batch, seq)


# --------------------------------------------------------------------------------------------------
# one row per node


@dataclass
class NodeRow:
    name: str
    op: str
    shape: str
    dtype: str
    flops: sympy.Expr
    bytes: sympy.Expr
    precision: str
    created_by: str
    module: str
    layer: str
    line: str


def module_path(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return re.sub(r"^L\['self'\]\.?", "", str(path)).replace("._modules['", ".").replace("']", "")


def layer_of(path: str) -> str:
    """``model.layers.3.self_attn.q_proj`` → ``model.layers.3``; paths without a layer index stay whole."""
    parts = path.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return path or "(top)"


def node_rows(gm: torch.fx.GraphModule) -> list[NodeRow]:
    from fxopt.cost import estimate
    from fxopt.ir.meta import format_type, symbol_map
    from fxopt.ir.printer import format_node, target_name

    costs = {c.name: c for c in estimate(gm).nodes}
    symbols = symbol_map(gm)
    rows = []
    for node in gm.graph.nodes:
        if node.op in ("get_attr", "output"):
            continue
        val = node.meta.get("val")
        type_str = format_type(val, symbols)
        shape = type_str[type_str.find("["):] if "[" in type_str and not type_str.startswith("(") else type_str
        dtype = str(val.dtype).replace("torch.", "") if isinstance(val, torch.Tensor) else ""
        cost = costs.get(node.name)
        path = module_path(node)
        op = "input" if node.op == "placeholder" else target_name(node)
        rows.append(NodeRow(node.name, op, shape, dtype, cost.flops if cost else sympy.Integer(0),
                            cost.bytes if cost else sympy.Integer(0), _precision(node, dtype),
                            node.meta.get("fxopt.created_by", "capture"), path, layer_of(path),
                            format_node(node, symbols)))
    return rows


def _precision(node, dtype: str) -> str:
    planned = node.meta.get("fxopt.precision")  # set by the precision passes on their kernels (and the planner)
    if planned is not None:
        return planned
    name = str(node.target)
    if "quantize" in name:
        return "int8 (q/dq)"
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "int8": "int8"}.get(dtype, dtype or "-")


def apply_filter(rows: list[NodeRow], filters: list[str]) -> list[NodeRow]:
    for f in filters:
        key, sep, value = f.partition("=")
        if not sep or key not in FILTER_KEYS or not value:
            raise DumpError(f"bad filter {f!r}: use KEY=VALUE with KEY one of {', '.join(FILTER_KEYS)} "
                            "(e.g. op=aten.linear)")
        attr = {"pass": "created_by"}.get(key, key)
        rows = [r for r in rows if value in getattr(r, attr)]
    return rows


def _num(expr, subs) -> float:
    return float(sympy.sympify(expr).subs(subs))


# --------------------------------------------------------------------------------------------------
# views


def view_text(gm, rows) -> str:
    from fxopt.ir.printer import format_graph

    if rows is None:
        return format_graph(gm, constants=False)
    return "\n".join(r.line for r in rows) + "\n"


def view_table(rows, subs) -> str:
    data = [[r.name, r.op, r.shape, r.dtype, f"{_num(r.flops, subs) / 1e6:.2f}", f"{_num(r.bytes, subs) / 1e6:.3f}",
             r.precision, r.created_by] for r in rows]
    return tabulate(data, headers=["node", "op", "shape", "dtype", "MFLOP", "MB", "precision", "created by"],
                    disable_numparse=True)


def view_summary(rows, subs) -> str:
    agg: dict[str, list] = {}
    for r in rows:
        a = agg.setdefault(r.op, [0, 0.0, 0.0])
        a[0] += 1
        a[1] += _num(r.flops, subs)
        a[2] += _num(r.bytes, subs)
    data = sorted(([op, n, f"{fl / 1e9:.3f}", f"{b / 1e6:.1f}"] for op, (n, fl, b) in agg.items()),
                  key=lambda x: (-float(x[2]), -x[1]))
    return tabulate(data, headers=["op", "nodes", "GFLOP", "MB moved"], disable_numparse=True)


def view_layers(rows, subs, expand: str | None) -> str:
    groups: dict[str, list[NodeRow]] = {}
    for r in rows:
        groups.setdefault(r.layer, []).append(r)
    data = []
    for layer, members in groups.items():
        ops: dict[str, int] = {}
        for m in members:
            ops[m.op] = ops.get(m.op, 0) + 1
        top = ", ".join(f"{op}×{n}" for op, n in sorted(ops.items(), key=lambda x: -x[1])[:4])
        data.append([layer, len(members), f"{sum(_num(m.flops, subs) for m in members) / 1e9:.3f}", top])
    text = tabulate(data, headers=["layer", "nodes", "GFLOP", "main ops"], disable_numparse=True)
    if expand:
        members = groups.get(expand)
        if members is None:
            raise DumpError(f"no layer {expand!r}; layers: {', '.join(list(groups)[:8])}…")
        text += f"\n\n{expand}:\n" + "\n".join(m.line for m in members)
    return text


def view_diff(after_rows: list[NodeRow], before_rows: list[NodeRow], pass_name: str, subs) -> str:
    old = {r.name: r for r in before_rows}
    new = {r.name: r for r in after_rows}
    added = [r for n, r in new.items() if n not in old]
    removed = [r for n, r in old.items() if n not in new]
    changed = [r for n, r in new.items() if n in old and old[n].line != r.line]
    delta = sum(_num(r.flops, subs) for r in after_rows) - sum(_num(r.flops, subs) for r in before_rows)
    lines = [f"// {pass_name}: +{len(added)} added, -{len(removed)} removed, ~{len(changed)} changed, "
             f"FLOPs {delta / 1e9:+.4f} G"]
    lines += [f"- {r.line}" for r in removed]
    lines += [f"+ {r.line}" for r in added]
    lines += [f"~ {r.line}" for r in changed]
    return "\n".join(lines)


def to_networkx(gm: torch.fx.GraphModule, rows: list[NodeRow], subs) -> nx.DiGraph:
    keep = {r.name: r for r in rows}
    g = nx.DiGraph()
    for r in rows:
        g.add_node(r.name, op=r.op, shape=r.shape, dtype=r.dtype, mflop=_num(r.flops, subs) / 1e6,
                   created_by=r.created_by, layer=r.layer)
    for node in gm.graph.nodes:
        if node.name in keep:
            for inp in node.all_input_nodes:
                if inp.name in keep:
                    g.add_edge(inp.name, node.name)
    return g


def view_mermaid(g: nx.DiGraph) -> str:
    ident = {n: f"n{i}" for i, n in enumerate(g.nodes)}
    lines = ["flowchart TD"]
    for n, data in g.nodes(data=True):
        label = f"{n}<br/>{data['op']} {data['shape']}".replace('"', "'")
        lines.append(f'    {ident[n]}["{label}"]')
    lines += [f"    {ident[u]} --> {ident[v]}" for u, v in g.edges]
    return "\n".join(lines) + "\n"


def view_dot(g: nx.DiGraph) -> str:
    lines = ["digraph fxopt {", "  node [shape=box, fontname=monospace, fontsize=10];"]
    for n, data in g.nodes(data=True):
        label = f"{n}\\n{data['op']}\\n{data['shape']}".replace('"', "'")
        lines.append(f'  "{n}" [label="{label}"];')
    lines += [f'  "{u}" -> "{v}";' for u, v in g.edges]
    return "\n".join(lines + ["}"]) + "\n"


def view_svg(g: nx.DiGraph) -> str:
    dot = shutil.which("dot")
    if dot is None:
        raise DumpError("--format svg needs graphviz's `dot` program (apt-get install graphviz); "
                        "--format html needs nothing")
    proc = subprocess.run([dot, "-Tsvg"], input=view_dot(g), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DumpError(f"dot failed: {proc.stderr.strip()[:300]}")
    return proc.stdout


def view_html(g: nx.DiGraph, title: str) -> str:
    """A self-contained page: a layered layout computed here, drawn as inline SVG; search, zoom, pan."""
    from fxopt.tools.dump_html import render

    return render(g, title)


# --------------------------------------------------------------------------------------------------
# the command


def run(args) -> str:
    from fxopt.pipeline import build_pipeline
    from fxopt.ir.capture import capture
    from fxopt.pass_manager import PassManager, Instrument
    from fxopt.ir.meta import dim_symbol

    if args.format not in FORMATS:
        raise DumpError(f"unknown format {args.format!r}; choose one of {', '.join(FORMATS)}")
    for f in args.filter:
        apply_filter([], [f])  # validate before the slow parts
    if args.format in PICTURES and args.each_pass:
        raise DumpError(f"--each-pass makes one view per pass; --format {args.format} draws one graph "
                        "(use --after PASS)")
    from fxopt.model_source import import_factory_module, is_factory_spec
    if is_factory_spec(args.model):
        import_factory_module(args.model)  # it may register the passes --passes names
    pipeline = build_pipeline(args.passes)
    names = [p.name for p, _ in pipeline]
    if args.after and args.after not in names and args.after != "capture":
        raise DumpError(f"--after {args.after!r} is not a pass of the pipeline ({', '.join(names)}, or capture)")
    progress = _progress(args.quiet)
    progress(f"loading {args.model}")
    model, example = load_model(args.model, args.batch, args.seq)
    progress("capturing with torch.export")
    if isinstance(example, dict):
        captured = capture(model, (), example)
    else:
        captured = capture(model, example if isinstance(example, tuple) else (example,))
    gm = captured.graph_module
    subs = {dim_symbol(k): v for k, v in captured.example_dims().items()}
    outputs: list[str] = []

    def render(label: str, before_rows=None):
        rows = apply_filter(node_rows(gm), args.filter)
        if args.format == "diff":
            return view_diff(rows, before_rows, label, subs) if before_rows is not None else ""
        body = _render(gm, rows, subs, args)
        return body if args.format in PICTURES else f"// {label}\n{body}"

    class EachPass(Instrument):
        def __init__(self):
            self.before_rows = None

        def before_pass(self, p, gm_, ctx):
            if args.each_pass or args.format == "diff":
                self.before_rows = apply_filter(node_rows(gm_), args.filter)

        def after_pass(self, p, gm_, ctx, record):
            progress(f"pass {p.name}: {record.nodes_before} → {record.nodes_after} nodes")
            if (args.each_pass or args.format == "diff") and (record.changed or not args.only_changed):
                text = render(f"after {p.name}", self.before_rows)
                if text:
                    outputs.append(text)
            return None

    stop = len(pipeline) if not args.after else (0 if args.after == "capture" else names.index(args.after) + 1)
    if not args.each_pass and args.format != "diff" and stop == 0:
        outputs.append(render("after capture"))
    PassManager(pipeline[:stop], [EachPass()]).run(gm, captured.example_inputs)
    if not args.each_pass and args.format != "diff" and stop > 0:
        outputs.append(render(f"after {names[stop - 1]}"))
    return "\n\n".join(o for o in outputs if o) + "\n"


def _render(gm, rows, subs, args) -> str:
    fmt = args.format
    if fmt == "text":
        return view_text(gm, rows if args.filter else None)
    if fmt == "table":
        return view_table(rows, subs)
    if fmt == "summary":
        return view_summary(rows, subs)
    if fmt == "layers":
        return view_layers(rows, subs, args.expand)
    g = to_networkx(gm, rows, subs)
    if fmt == "mermaid":
        return view_mermaid(g)
    if fmt == "svg":
        return view_svg(g)
    if fmt == "html":
        return view_html(g, f"fxopt · {args.model}")
    if fmt == "graphml":
        return "\n".join(nx.generate_graphml(g))
    if fmt == "json":
        return json.dumps(nx.node_link_data(g, edges="edges"), indent=1)
    raise DumpError(f"unknown format {fmt!r}")


def _progress(quiet: bool):
    def say(message: str) -> None:
        if not quiet:
            print(f"[fxopt dump] {message}", file=sys.stderr, flush=True)
    return say


def parser() -> argparse.ArgumentParser:
    from fxopt.tools.bench import positive_int

    p = argparse.ArgumentParser(prog="fxopt dump", description=__doc__.splitlines()[0])
    p.add_argument("model", help="minilm, smollm2, a HF model dir or config.json, or module:factory")
    p.add_argument("--batch", type=positive_int, default=2, help="example batch size (default 2)")
    p.add_argument("--seq", type=positive_int, default=32, help="example sequence length (default 32)")
    p.add_argument("--format", default="text", help=f"one of {', '.join(FORMATS)} (default text)")
    p.add_argument("--passes", default=None, help="pipeline spec (default: the default pipeline)")
    p.add_argument("--after", metavar="PASS", help="show the graph after this pass (or 'capture')")
    p.add_argument("--each-pass", action="store_true", help="show the graph after every pass")
    p.add_argument("--only-changed", action="store_true", help="with --each-pass: only passes that changed it")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                   help=f"keep nodes whose KEY contains VALUE; KEY: {', '.join(FILTER_KEYS)} (repeatable)")
    p.add_argument("--expand", metavar="LAYER", help="with --format layers: list this layer's nodes")
    p.add_argument("--out", metavar="PATH", help="write to PATH instead of standard output")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    from fxopt.errors import FxoptError

    from fxopt.machine import writable_output

    args = parser().parse_args(argv)
    problem = writable_output(args.out) if args.out else None
    if problem:  # before the model loads, not after the work is done
        print(f"fxopt dump: error: --out: {problem}", file=sys.stderr)
        return 2
    try:
        text = run(args)
    except (DumpError, FxoptError) as e:
        print(f"fxopt dump: error: {e}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(text)
        print(f"[fxopt dump] wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
