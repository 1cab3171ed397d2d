"""`crome-edge serve`: a camera, an engine and an HTTP API in one process, torch-free.

    camera (sources.py) ─▶ reader thread (reader.py) ─▶ newest-frame slot ──────────────────────┐
    HTTP: host.py ─▶ guard.py ─▶ app.py (protocol.py, images.py) ─┬─▶ job streams (jobs.py) ─▶ fair bounded
    watch loop (watch.py) ────────────────────────────────────────┘   queue (fairqueue.py) ─▶ engine worker
    answers ─▶ HTTP response / SSE fan-out + JSONL log (events.py) / Prometheus (metrics.py)   (worker.py)

server.py assembles the parts and their lifecycle; host.py runs the app (app.py) under uvicorn on a socket
the caller bound, app.py never reaching the engine but through a job's stream (jobs.py); config.py holds every
default once. The web page (static/) is plain HTML/JS shipped as package data. Importing this package
imports nothing heavy; fastapi and uvicorn are imported by app.py, guard.py and host.py.
"""
