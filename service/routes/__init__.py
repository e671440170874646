"""HTTP and WebSocket routes; each module takes the Runtime and never reads settings."""
