"""docs/security.md says where Jupyter listens as the agent starts it: loopback on a server,
in a Slurm job the node's loopback with node login and its NodeAddr without; the page must not
claim loopback for the last."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGE = " ".join((REPO / "docs" / "security.md").read_text().split())
AGENT = REPO / "src" / "nbremote" / "agent"


def test_the_agent_listens_on_loopback_on_a_server_and_on_loopback_or_nodeaddr_in_a_slurm_job():
    assert '"--ip=127.0.0.1"' in (AGENT / "jupyter.py").read_text()
    launcher = (AGENT / "launcher.py").read_text()
    assert '"--ip=" + ip' in launcher and "NodeAddr=" in launcher
    assert 'ip = "127.0.0.1" if listen == "loopback" else socket.gethostbyname(addr)' in launcher


def test_the_page_says_so():
    assert (
        "| Slurm compute node | Jupyter in the batch job | with node login (`pam_slurm_adopt`, `node_login`), "
        "`127.0.0.1` only, reached by the laptop's ssh to the node; without, the node's `NodeAddr`" in PAGE
    )
    assert "Jupyter never listens off loopback when node login is used:**" in PAGE
    assert "Who can reach it:** anyone who can open a TCP connection to that node" in PAGE
    assert "Why the token still protects it:**" in PAGE
    # No unqualified claim that nothing listens beyond loopback, or that the forward always ends there.
    assert not re.search(r"nothing of ours listens on another address\.(?! The one exception is Slurm)", PAGE)
    assert "the forward is always `127.0.0.1:LOCAL → 127.0.0.1:REMOTE`" not in PAGE
