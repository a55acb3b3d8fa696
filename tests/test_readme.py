"""README's Python snippet runs as written, from an empty folder."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_python_snippet_runs_as_written(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "README should hold one Python snippet"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    code = "import torch\ntorch.set_num_threads(1)\n" + blocks[0] + "\nprint('images', tuple(images.shape))\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "images (64, 1, 16, 16)" in done.stdout
    assert (tmp_path / "mined.safetensors").is_file() and (tmp_path / "runs" / "readme-source").is_dir()
