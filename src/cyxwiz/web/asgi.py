"""ASGI entry point for multi-worker servers: ``uvicorn cyxwiz.web.asgi:app``."""

from cyxwiz.config import get_settings
from cyxwiz.web.app import create_app

app = create_app(get_settings(), run_scheduler=True)
