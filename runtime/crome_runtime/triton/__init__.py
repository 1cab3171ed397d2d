"""crome-edge on NVIDIA Triton Inference Server: a model repository from a bundle, the server, a client.

    repository.py  bundle -> model repository (config.pbtxt + model.py; python-backend or GPU variant)
    pbtxt.py       writing config.pbtxt text and checking it against Triton's ModelConfig schema
    io.py          the names, types and shapes of the model's inputs and outputs (one definition)
    backend.py     the python-backend model (runs inside Triton's stub process; the engine, batched vision)
    server.py      finding tritonserver (the nvidia-pytriton wheel, fetched with pip download --no-deps) and
                   starting it on chosen ports
    client.py      a small HTTP/JSON (KServe v2) client with Triton's binary-data extension; stdlib only

Torch-free like the rest of the runtime. Not here: the CLI commands (crome_cli.triton_repo, crome_cli.tritonserver, crome_cli.client).
How to use it and what was learned: docs/scale-out.md.
"""
