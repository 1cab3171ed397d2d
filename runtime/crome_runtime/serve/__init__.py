"""`crome-edge serve`: a camera, an engine and an HTTP API in one process, torch-free.

    camera (sources.py) ─▶ reader thread (reader.py) ─▶ newest-frame slot ─┐
    HTTP (app.py, openai_api.py, images.py) ─▶ fair bounded queue (fairqueue.py) ─▶ engine worker (worker.py)
    watch loop (watch.py) ─────────────────────┘                                        │
    answers ─▶ HTTP response / SSE fan-out + JSONL log (events.py) / Prometheus (metrics.py)

server.py assembles the parts and runs uvicorn on a socket it has bound itself; config.py holds every
default once. The web page (static/) is plain HTML/JS shipped as package data. Importing this package
imports nothing heavy; fastapi and uvicorn are imported by app.py and server.py.
"""
