"""dtlnd: real-time DTLN noise suppression and echo cancellation for embedded Linux."""

__version__ = "0.1.0"
