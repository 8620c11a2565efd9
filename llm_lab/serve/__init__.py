"""Serve a model package over HTTP: OpenAI-style completions and a playground page.

``create_app(package)`` builds the FastAPI app; ``llm-lab serve PACKAGE`` runs it with uvicorn on 127.0.0.1.
FastAPI and uvicorn are only needed here, so importing ``llm_lab`` never requires them.
"""

from llm_lab.serve.app import create_app
from llm_lab.serve.engine import CompletionEngine, SamplingSettings

__all__ = ["CompletionEngine", "SamplingSettings", "create_app"]
