"""certaindex: measure how certain LLM reasoning already is, and stop it once the answer has settled."""

__version__ = "0.1.0"
