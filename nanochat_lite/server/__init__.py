"""The HTTP and WebSocket server. Public API: `create_app`, `Runtime`."""

from .app import create_app
from .chat.runtime import Runtime

__all__ = ["create_app", "Runtime"]
