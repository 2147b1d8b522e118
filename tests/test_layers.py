"""The rooms' import rules (ARCHITECTURE.md): arrows point down."""

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_rewards_import_neither_torch_nor_model():
    """rewards/ holds pure functions of strings and metadata: importing it (in a fresh
    interpreter) loads neither torch nor anything of r1v2.model."""
    code = (
        "import sys, r1v2.rewards, r1v2.rewards.hybrid, r1v2.rewards.timeout; "
        "print('torch' in sys.modules, any(m.startswith('r1v2.model') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
