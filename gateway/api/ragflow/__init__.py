"""RAGFlow's API under `/ragflow` (`http.py`) and its WebSocket chat (`ws.py`)."""
