"""The tutorial's code runs, block after block, in one namespace: docs that cannot rot."""
import re
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "writing-a-pass.md"


def test_writing_a_pass_tutorial_runs():
    blocks = re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(), flags=re.S)
    assert len(blocks) >= 5
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{TUTORIAL.name}[block {i}]", "exec"), namespace)  # noqa: S102
    assert namespace["compiled"].report.pipeline.record("fuse-silu").stats == {"fuse-silu": 1}
