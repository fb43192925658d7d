"""Importing fastlr imports neither torch, cupy nor numba, and compiles nothing."""
import subprocess
import sys


def test_import_is_light():
    code = ("import sys, fastlr, fastlr.functional; "
            "bad = [m for m in ('torch', 'cupy', 'numba', 'ray', 'matplotlib') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
