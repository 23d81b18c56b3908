"""fxopt dump: text, table, diff and layer views (golden), the HTML page in a real browser, CLI errors."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fxopt.tools.dump_graph import main

FACTORY = "dump_factory:tiny"


@pytest.fixture(autouse=True)
def factory_on_path(monkeypatch, tmp_path):
    (tmp_path / "dump_factory.py").write_text(
        "import torch\n"
        "class Tiny(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.q = torch.nn.Linear(4, 4)\n"
        "        self.k = torch.nn.Linear(4, 4)\n"
        "        self.drop = torch.nn.Dropout(0.1)\n"
        "    def forward(self, x):\n"
        "        return self.drop(self.q(x)) * self.k(x)\n"
        "def tiny():\n"
        "    torch.manual_seed(0)\n"
        "    return Tiny().eval(), (torch.randn(2, 4),)\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def dump(capsys, *args):
    code = main([FACTORY, "--quiet", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_text_after_a_pass_golden(capsys):
    # (after the whole pipeline the linear's library depends on this machine's GEMM timings)
    code, out, _ = dump(capsys, "--after", "fuse-sibling-linears")
    assert code == 0
    assert out == (
        "// after fuse-sibling-linears\n"
        "%x = input : f32[batch, 4]\n"
        "%linear_default = aten.linear(%x, %_fxopt_linear_fused_weight, %_fxopt_linear_fused_bias) : f32[batch, 8]\n"
        "%split_with_sizes_default = aten.split_with_sizes(%linear_default, [4, 4], -1) : (f32[batch, 4], f32[batch, 4])\n"
        "%getitem = getitem(%split_with_sizes_default, 0) : f32[batch, 4]\n"
        "%getitem_1 = getitem(%split_with_sizes_default, 1) : f32[batch, 4]\n"
        "%mul = aten.mul.Tensor(%getitem, %getitem_1) : f32[batch, 4]\n"
        "return (%mul,)\n\n"
    )


def test_table_with_filter_golden(capsys):
    code, out, _ = dump(capsys, "--format", "table", "--after", "capture", "--filter", "op=aten.linear")
    assert code == 0
    assert out.splitlines()[0] == "// after capture"
    assert out.splitlines()[3].split() == ["linear", "aten.linear", "[batch,", "4]", "float32", "0.00", "0.000",
                                           "fp32", "capture"]
    assert len(out.splitlines()) == 5  # header, rule, two linears


def test_diff_each_pass_golden(capsys):
    code, out, _ = dump(capsys, "--format", "diff", "--only-changed")
    assert code == 0
    assert out.startswith("// after eliminate-dead-nodes: +0 added, -1 removed, ~1 changed, FLOPs +0.0000 G\n"
                          "- %dropout = aten.dropout(%linear, 0.1, False) : f32[batch, 4]\n"
                          "~ %mul = aten.mul.Tensor(%linear, %linear_1) : f32[batch, 4]\n")
    assert "// after fuse-sibling-linears: +4 added, -2 removed" in out
    assert "+ %split_with_sizes_default = aten.split_with_sizes" in out


def test_summary_layers_mermaid_json_graphml(capsys):
    for fmt, expect in (("summary", "aten.linear"), ("layers", "(top)"), ("mermaid", "flowchart TD"),
                        ("json", '"edges"'), ("graphml", "<graphml")):
        code, out, _ = dump(capsys, "--format", fmt, "--after", "fuse-sibling-linears")
        assert code == 0 and expect in out, fmt


def test_real_model_layers_view_and_provenance(capsys):
    code = main(["minilm", "--quiet", "--format", "layers", "--expand", "encoder.layer.0"])
    out = capsys.readouterr().out
    assert code == 0
    assert "encoder.layer.5" in out and "encoder.layer.0:" in out
    code = main(["minilm", "--quiet", "--format", "table", "--after", "fuse-sibling-linears",
                 "--filter", "pass=fuse-sibling-linears", "--filter", "op=aten.linear"])
    assert len([l for l in capsys.readouterr().out.splitlines() if "aten.linear" in l]) == 6


@pytest.mark.parametrize("args, message", [
    (["nosuchmodel"], "unknown model 'nosuchmodel'"),
    ([FACTORY, "--after", "fuse-everything"], "--after 'fuse-everything' is not a pass of the pipeline"),
    ([FACTORY, "--passes", "fuse-qvk"], "unknown pass 'fuse-qvk'"),
    ([FACTORY, "--filter", "colour=red"], "bad filter 'colour=red'"),
    ([FACTORY, "--format", "pdf"], "unknown format 'pdf'"),
    ([FACTORY, "--format", "html", "--each-pass"], "--each-pass makes one view per pass"),
    (["nosuch.module:factory"], "cannot import module 'nosuch.module'"),
])
def test_cli_errors_are_one_line(capsys, args, message):
    code = main([*args, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("fxopt dump: error: ") and message in err and err.count("\n") == 1


def test_cli_entry_point():
    proc = subprocess.run([sys.executable, "-m", "fxopt.tools.cli", "dump", "nosuchmodel"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "unknown model" in proc.stderr


ARTIFACTS = Path(__file__).parent / "artifacts"


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_html_page_works_in_a_real_browser(tmp_path, capsys):
    page = tmp_path / "smollm2.html"
    assert main(["smollm2", "--quiet", "--format", "html", "--out", str(page)]) == 0
    assert "http" not in page.read_text().split("<svg", 1)[0].replace('http://www.w3.org/2000/svg', "")
    proc = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
         f"file://{page}#q=rms_norm"],
        capture_output=True, text=True, timeout=120)
    dom = proc.stdout
    assert 'id="count">61 of ' in dom  # the script ran: the search found SmolLM2's 61 fused RMSNorms
    assert dom.count('class="node hit"') == 61
    # the rendered page, kept as a test artifact (tests/artifacts/, not committed) for a person to look at
    shot = ARTIFACTS / "dump_html_smollm2.png"
    shot.parent.mkdir(exist_ok=True)
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile2'}", "--virtual-time-budget=5000",
                    "--window-size=1400,900", f"--screenshot={shot}", f"file://{page}#q=rms_norm"],
                   capture_output=True, text=True, timeout=120)
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 10_000  # something was drawn


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed (apt-get install graphviz)")
def test_svg_through_graphviz(capsys):
    code, out, _ = dump(capsys, "--format", "svg", "--after", "fuse-sibling-linears")
    assert code == 0 and out.lstrip().startswith("<?xml") and "<svg" in out and "aten.linear" in out


def test_python_dash_m_tools_dump_graph_from_the_repository():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "tools.dump_graph", "--help"], cwd=root, capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "--each-pass" in proc.stdout
