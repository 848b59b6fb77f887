"""`streamlit run app.py` as the README gives it, on a machine with no terminal and no Streamlit credentials: it must
serve without asking anything (server.headless false stops at an "Email:" prompt, and exits 255 without a tty)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.browser.conftest import free_port, stop_server, wait_until_serving

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_command_serves_with_stdin_closed_and_a_home_without_credentials(tmp_path):
    port = free_port()
    home = tmp_path / "home"  # a fresh user: no ~/.streamlit/credentials.toml
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "REGIME_DB": str(tmp_path / "bars.duckdb"),
           "REGIME_RUNS": str(tmp_path / "runs"), "REGIME_DIAGNOSTICS": str(tmp_path / "diagnostics")}
    # Only the port differs from the README's command; headless comes from the project's .streamlit/config.toml.
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)]
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        wait_until_serving(process, f"http://localhost:{port}", log, timeout_s=60)
        assert "Email" not in log.read_text()
        assert not (home / ".streamlit" / "credentials.toml").exists()
    finally:
        stop_server(process)
