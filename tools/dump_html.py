"""The dump tool's HTML page: one file, no network. A layered layout (networkx topological generations)
drawn as inline SVG; the page's script adds search (highlights and centres matching nodes), wheel zoom
and drag to pan."""
from __future__ import annotations

import html
import json

import networkx as nx

BOX_W, BOX_H, GAP_X, GAP_Y = 220, 44, 30, 36
COLORS = {"capture": "#eef3fb"}


def _layout(g: nx.DiGraph) -> dict[str, tuple[float, float]]:
    pos = {}
    for row, generation in enumerate(nx.topological_generations(g)):
        for col, name in enumerate(sorted(generation)):
            pos[name] = (col * (BOX_W + GAP_X), row * (BOX_H + GAP_Y))
    return pos


def render(g: nx.DiGraph, title: str) -> str:
    pos = _layout(g)
    width = max((x for x, _ in pos.values()), default=0) + BOX_W + 40
    height = max((y for _, y in pos.values()), default=0) + BOX_H + 40
    parts = []
    for u, v in g.edges:
        (x1, y1), (x2, y2) = pos[u], pos[v]
        parts.append(f'<line x1="{x1 + BOX_W / 2 + 20}" y1="{y1 + BOX_H + 20}" x2="{x2 + BOX_W / 2 + 20}" '
                     f'y2="{y2 + 20}" class="edge"/>')
    for name, data in g.nodes(data=True):
        x, y = pos[name]
        fill = "#eef3fb" if data["created_by"] == "capture" else "#fff2cc"
        tip = html.escape(f"{name}: {data['op']} {data['shape']} {data['dtype']} · {data['mflop']:.2f} MFLOP · "
                          f"created by {data['created_by']} · {data['layer']}")
        label = html.escape(f"{data['op']}")[:34]
        parts.append(
            f'<g class="node" data-search="{html.escape((name + " " + data["op"] + " " + data["layer"]).lower())}" '
            f'transform="translate({x + 20},{y + 20})"><title>{tip}</title>'
            f'<rect width="{BOX_W}" height="{BOX_H}" rx="6" fill="{fill}"/>'
            f'<text x="8" y="18" class="name">{html.escape(name)[:30]}</text>'
            f'<text x="8" y="35" class="op">{label} {html.escape(data["shape"])[:24]}</text></g>')
    svg = (f'<svg id="graph" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
           f'data-width="{width}" data-height="{height}">{"".join(parts)}</svg>')
    stats = json.dumps({"nodes": g.number_of_nodes(), "edges": g.number_of_edges()})
    return PAGE.replace("__TITLE__", html.escape(title)).replace("__SVG__", svg).replace("__STATS__", stats)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{margin:0;font:13px system-ui,sans-serif}
header{position:fixed;top:0;left:0;right:0;background:#223;color:#fff;padding:6px 10px;display:flex;gap:12px;z-index:1}
#search{width:280px}
#view{position:absolute;top:40px;left:0;right:0;bottom:0;overflow:hidden;cursor:grab}
svg{width:100%;height:100%}
.edge{stroke:#99a;stroke-width:1.2}
.node rect{stroke:#557;stroke-width:1}
.node.hit rect{fill:#ffb3b3;stroke:#c00;stroke-width:3}
.name{font:bold 11px monospace}.op{font:11px monospace;fill:#334}
</style></head><body>
<header><b>__TITLE__</b><input id="search" placeholder="search node, op or layer (Enter: next)">
<span id="count"></span><span>wheel: zoom · drag: pan</span></header>
<div id="view">__SVG__</div>
<script>
const stats = __STATS__;
const svg = document.getElementById('graph');
const W = +svg.dataset.width, H = +svg.dataset.height;
let vb = {x: 0, y: 0, w: Math.min(W, 1600), h: Math.min(H, 1000)};
function apply() { svg.setAttribute('viewBox', `${vb.x} ${vb.y} ${vb.w} ${vb.h}`); }
apply();
document.getElementById('view').addEventListener('wheel', e => {
  e.preventDefault();
  const k = e.deltaY > 0 ? 1.2 : 1 / 1.2;
  vb.x += vb.w * (1 - k) / 2; vb.y += vb.h * (1 - k) / 2; vb.w *= k; vb.h *= k; apply();
}, {passive: false});
let drag = null;
svg.addEventListener('mousedown', e => { drag = {x: e.clientX, y: e.clientY}; });
window.addEventListener('mouseup', () => { drag = null; });
window.addEventListener('mousemove', e => {
  if (!drag) return;
  const s = vb.w / svg.clientWidth;
  vb.x -= (e.clientX - drag.x) * s; vb.y -= (e.clientY - drag.y) * s; drag = {x: e.clientX, y: e.clientY}; apply();
});
let hits = [], current = -1;
function search(q) {
  q = q.trim().toLowerCase();
  document.querySelectorAll('.node').forEach(n => n.classList.remove('hit'));
  hits = q ? [...document.querySelectorAll('.node')].filter(n => n.dataset.search.includes(q)) : [];
  hits.forEach(n => n.classList.add('hit'));
  document.getElementById('count').textContent = q ? `${hits.length} of ${stats.nodes} nodes` : `${stats.nodes} nodes`;
  current = -1; next();
}
function next() {
  if (!hits.length) return;
  current = (current + 1) % hits.length;
  const m = hits[current].transform.baseVal.consolidate().matrix;
  vb.x = m.e - vb.w / 2; vb.y = m.f - vb.h / 2; apply();
}
const box = document.getElementById('search');
box.addEventListener('input', () => search(box.value));
box.addEventListener('keydown', e => { if (e.key === 'Enter') next(); });
const initial = decodeURIComponent(location.hash.replace(/^#q=/, ''));  // page.html#q=linear
box.value = initial;
search(initial);
</script></body></html>
"""
