"""Helpers shared by test modules (no tests here; pytest fixtures stay in tests/conftest.py):

    adapters.py          a tiny adapter trained in-process in seconds
    bundles.py           the tiny colour bundle and the two-adapter bundle (exported once per session), bundle edits
    datasets.py          `crome-edge data synth` sets at the tiny backbone's image size
    images.py            PNG headers that declare any size (bad-input cases)
    serve.py             a running server on a loopback port, colour and MJPEG cameras, bounded waits
    torch_blocked.py     the environment of a child process that cannot import torch or the export side
    bad_input_runner.py  the subprocess side of tests/test_bad_inputs.py (run as a script, not imported)
"""
