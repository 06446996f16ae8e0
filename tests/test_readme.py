"""Every Python example in the README runs as written (needs the source tree: PYQUANT_SOURCE_DIR)."""
import os
import re
import subprocess
import sys

import pytest

SRC = os.environ.get("PYQUANT_SOURCE_DIR", "")
README = os.path.join(SRC, "README.md")


@pytest.mark.skipif(not os.path.isfile(README), reason="needs PYQUANT_SOURCE_DIR pointing at the source tree")
def test_readme_python_examples_run(tmp_path):
    text = open(README, encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "the README has no Python examples"
    if any("import torch" in b or ", torch" in b for b in blocks):
        pytest.importorskip("torch")  # the import example needs PyTorch
    r = subprocess.run([sys.executable, "-c", "\n".join(blocks)], capture_output=True, text=True, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
