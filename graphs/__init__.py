"""The StateGraph wiring; `graphs.qa.graph` is what `langgraph dev` opens."""
