"""The load test, bounded for CI: 32 concurrent streaming clients send 256
requests mixing 8 adapters and the base; zero failures, and every greedy
answer equals the same request run alone (load_test.py asserts both)."""

import os
import subprocess
import sys

from conftest import cli


def test_load_32_clients_8_adapters_equal_solo():
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "load_test.py")
    r = subprocess.run([sys.executable, script, "--cli", cli(), "--requests", "256", "--clients", "32",
                        "--max-tokens", "16"], capture_output=True, text=True, timeout=600)
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr[-5000:])
    assert r.returncode == 0
    assert "256 requests from 32 clients" in r.stdout and "0 failed, 0 differ from solo" in r.stdout
