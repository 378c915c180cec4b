"""The public API: accounts, API keys, quotas, uploads and analyses (FastAPI)."""
