"""Agent entry point: the bootstrap calls ``main`` once the modules are loaded."""
import sys

from . import jupyter, protocol

HANDLERS = {
    "up": jupyter.op_up,
    "down": jupyter.op_down,
    "ls": jupyter.op_ls,
}


def main(agent_hash):
    protocol.serve(sys.stdin, sys.stdout, HANDLERS, agent_hash)
