"""STOMP 1.0/1.1/1.2: sans-IO codec, TCP listener, WebSocket handler."""
