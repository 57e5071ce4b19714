"""The OpenAI- and Ollama-compatible HTTP server (FastAPI): `from compactkv.server.app import create_app`."""
