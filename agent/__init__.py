"""The QA agent: state, run-time context, settings, prompts and the graph's nodes."""
