"""One small async function per graph node; `graphs/qa.py` wires them."""

from agent.nodes.answer import answer
from agent.nodes.cite_check import cite_check
from agent.nodes.classify import classify
from agent.nodes.command import command
from agent.nodes.rerank import rerank
from agent.nodes.retrieve import retrieve
from agent.nodes.tools import call_tools

__all__ = ["answer", "call_tools", "cite_check", "classify", "command", "rerank", "retrieve"]
