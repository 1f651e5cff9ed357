"""The contracts the two sides share import without torch, and the CLIs start."""

import subprocess
import sys


def test_agent_never_imports_torch_or_export():
    code = (
        "import sys, pkgutil, importlib, agent\n"
        "for m in pkgutil.walk_packages(agent.__path__, 'agent.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = [n for n in sys.modules if n.split('.')[0] in ('torch', 'tensorflow', 'export')]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"agent pulled in: {out.stdout.strip()}"


def test_clis_print_help():
    for mod in ("agent.cli", "export.cli"):
        out = subprocess.run([sys.executable, "-m", mod, "--help"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "usage:" in out.stdout
