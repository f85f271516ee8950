"""The OpenAI-compatible HTTP API and chat page: app.py (route functions over an app state), openai_shapes.py
(the request and response shapes), static/ (the page). `scratchlm serve` (commands/serve.py) runs it; FastAPI
loads only when serving."""
