"""Bad inputs at every non-HTTP entry point: each `crome-edge` command and each file loader, one table row per
distinct bad input (the server's endpoints have their own suite).

Every row asserts what a user must get: exit status 2 (a loader: its own error class), exactly one
`crome-edge CMD: error: ...` line that says what is wrong (the row's pattern), no traceback, nothing written
under the fixtures or left in the temp directory, no file opened under `secret/` (which hostile bundles and
datasets point at), and bounded memory: all rows run in one subprocess (tests/support/bad_input_runner.py) under an
address-space limit, so an input that makes a command allocate gigabytes fails its row with MemoryError
instead. The fixtures are made once per module: the tiny FP32 bundle of the runtime tests, and forged copies of
its files (hard links where only the manifest changes).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from tests.support.bundles import adapter_path, tiny_bundle
from tests.support.images import png_header

from crome_runtime import formats
from crome_runtime.manifest import sha256_file

# The runner's whole address space: torch, transformers, onnxruntime and OpenCV loaded, plus one case. The inputs
# this suite guards against asked for 4.8 to 13 GB (and one for 4 TB).
ADDRESS_SPACE_LIMIT = 2 << 30
RUNNER = Path(__file__).parent / "support" / "bad_input_runner.py"
T1 = "--threads 1"

# (entry point, what is wrong, command line or loader call, pattern the error line must match)
# A command line is split on spaces; a token {name} is replaced by that fixture (any string, spaces included).
CASES: list[tuple[str, str, str, str]] = [
    # --- ask (PyTorch model) ---------------------------------------------------------------------------------
    ("ask", "negative synthetic seed", "ask --backbone tiny --synthetic -1 --question hi", r"--synthetic: must be a whole number >= 0"),
    ("ask", "negative threads", "ask --backbone tiny --synthetic 1 --question hi --threads -1", r"--threads: must be a whole number >= 1"),
    ("ask", "zero threads", "ask --backbone tiny --synthetic 1 --question hi --threads 0", r"--threads: must be a whole number >= 1"),
    ("ask", "negative max-new-tokens", "ask --backbone tiny --synthetic 1 --question hi --max-new-tokens -3", r"--max-new-tokens: must be"),
    ("ask", "empty question", "ask --backbone tiny --synthetic 1 --question {blank}", r"--question is empty"),
    ("ask", "100k-character question", "ask --backbone tiny --synthetic 1 --question {q100k}", r"100,000 characters, over the 4,000-character limit"),
    ("ask", "question over the context", "ask --backbone tiny --synthetic 1 --question {q300} " + T1, r"the question is 300 tokens; .*template's \d+ tokens .* at most \d+ tokens"),
    ("ask", "invalid UTF-8 question", "ask --backbone tiny --synthetic 1 --question {not_utf8}", r"not valid UTF-8"),
    ("ask", "missing image", "ask --backbone tiny --image {root}/nope.png --question hi " + T1, r"no such file"),
    ("ask", "image is a directory", "ask --backbone tiny --image {root}/images --question hi " + T1, r"not a regular file"),
    ("ask", "image is /dev/zero", "ask --backbone tiny --image /dev/zero --question hi " + T1, r"not a regular file"),
    ("ask", "truncated TIFF", "ask --backbone tiny --image {root}/trunc.tif --question hi " + T1, r"truncated"),
    ("ask", "truncated PNG header", "ask --backbone tiny --image {root}/trunc.png --question hi " + T1, r"truncated"),
    ("ask", "1x60000 image", "ask --backbone tiny --image {root}/wide.png --question hi " + T1, r"60000x1, a side over the 32,768-pixel limit"),
    ("ask", "decompression bomb header", "ask --backbone tiny --image {root}/bomb.png --question hi " + T1, r"over the 40,000,000-pixel limit"),
    ("ask", "text file named .png", "ask --backbone tiny --image {root}/text.png --question hi " + T1, r"not an image crome-edge can read"),
    ("ask", "adapter format_version 'one'", "ask --backbone tiny --adapter {root}/fv.safetensors --synthetic 1 --question hi " + T1, r"format_version 'one' is not a whole number"),
    ("ask", "adapter __metadata__ a list", "ask --backbone tiny --adapter {root}/meta_list.safetensors --synthetic 1 --question hi " + T1, r"__metadata__ is not a string -> string table"),
    ("ask", "adapter_config a list", "ask --backbone tiny --adapter {root}/cfg_list.safetensors --synthetic 1 --question hi " + T1, r"adapter_config must be"),
    ("ask", "adapter_config d_model a string", "ask --backbone tiny --adapter {root}/cfg_str.safetensors --synthetic 1 --question hi " + T1, r"d_model and rank must be whole numbers"),
    ("ask", "adapter_config extra key", "ask --backbone tiny --adapter {root}/cfg_extra.safetensors --synthetic 1 --question hi " + T1, r"adapter_config must be"),
    ("ask", "adapter stop_tokens a string", "ask --backbone tiny --adapter {root}/stop_str.safetensors --synthetic 1 --question hi " + T1, r"stop_tokens must be a list"),
    ("ask", "adapter prompt text a number", "ask --backbone tiny --adapter {root}/ptext.safetensors --synthetic 1 --question hi " + T1, r"text must be a string"),
    ("ask", "adapter training a list", "ask --backbone tiny --adapter {root}/training_list.safetensors --synthetic 1 --question hi " + T1, r"training is not a JSON object"),
    ("ask", "adapter for other weights of the same backbone", "ask --backbone tiny --adapter {root}/other_weights.safetensors --synthetic 1 --question hi " + T1, r"this tiny has other weights(?!.*pass --backbone tiny)"),
    ("ask", "truncated adapter", "ask --backbone tiny --adapter {root}/trunc.safetensors --synthetic 1 --question hi " + T1, r"truncated"),
    ("ask", "adapter with a huge header length", "ask --backbone tiny --adapter {root}/huge_header.safetensors --synthetic 1 --question hi " + T1, r"header length field reads"),
    ("ask", "missing adapter", "ask --backbone tiny --adapter {root}/none.safetensors --synthetic 1 --question hi " + T1, r"does not exist"),
    ("ask", "backbone dir with config.json but no weights", "ask --backbone {root}/hf_noweights --synthetic 1 --question hi " + T1, r"has a config.json but no weights"),
    ("ask", "backbone dir with a non-JSON config", "ask --backbone {root}/hf_badjson --synthetic 1 --question hi " + T1, r"config.json is not readable JSON"),
    ("ask", "unknown backbone", "ask --backbone tiny2 --synthetic 1 --question hi " + T1, r"unknown backbone 'tiny2'"),
    # --- train -------------------------------------------------------------------------------------------------
    ("train", "--encoder-lr nan", "train --backbone tiny --stage pretrain --data {data} --out {root}/o1.safetensors --encoder-lr nan", r"--encoder-lr: must be a finite number > 0, got 'nan'"),
    ("train", "negative --lr", "train --backbone tiny --data {data} --out {root}/o1.safetensors --lr -1", r"--lr: must be a finite number > 0"),
    ("train", "negative --warmup-steps", "train --backbone tiny --data {data} --out {root}/o1.safetensors --warmup-steps -5", r"--warmup-steps: must be a whole number >= 0"),
    ("train", "negative --max-new-tokens", "train --backbone tiny --data {data} --out {root}/o1.safetensors --max-new-tokens -5", r"--max-new-tokens: must be a whole number >= 1"),
    ("train", "--checkpoint-every 0", "train --backbone tiny --data {data} --out {root}/o1.safetensors --checkpoint-every 0", r"--checkpoint-every: must be a whole number >= 1"),
    ("train", "negative --threads", "train --backbone tiny --data {data} --out {root}/o1.safetensors --threads -1", r"--threads: must be a whole number >= 1"),
    ("train", "--val-fraction 1.5", "train --backbone tiny --data {data} --out {root}/o1.safetensors --val-fraction 1.5", r"--val-fraction: must be a finite number >= 0 and < 1"),
    ("train", "--steps 0", "train --backbone tiny --data {data} --out {root}/o1.safetensors --steps 0", r"--steps: must be a whole number >= 1"),
    ("train", "--rank 0", "train --backbone tiny --data {data} --out {root}/o1.safetensors --rank 0", r"--rank: must be a whole number >= 1"),
    ("train", "unwritable --out", "train --backbone tiny --data {data} --out {unwritable}/o.safetensors --steps 1 --no-progress " + T1, r"cannot write in"),
    ("train", "existing --out without --force", "train --backbone tiny --data {data} --out {adapter} --steps 1 --no-progress " + T1, r"exists; pass --force to replace it"),
    ("train", "2M-character question", "train --backbone tiny --data {root}/q2m.jsonl --out {root}/o1.safetensors --steps 1 " + T1, r"line 1 is over the 1 MiB line limit"),
    ("train", "5000-character question", "train --backbone tiny --data {root}/q5k.jsonl --out {root}/o1.safetensors --steps 1 " + T1, r"line 1: 'question' is 5,000 characters, over the 4,000-character limit"),
    ("train", "question over the context", "train --backbone tiny --data {root}/q300.jsonl --out {root}/o1.safetensors --steps 1 --no-progress --val-fraction 0 " + T1, r"q300.jsonl line 1: the question is 300 tokens"),
    ("train", "lone surrogate in a question", "train --backbone tiny --data {root}/surrogate.jsonl --out {root}/o1.safetensors --steps 1 " + T1, r"line 1: 'question' is not valid UTF-8"),
    ("train", "dataset not UTF-8", "train --backbone tiny --data {root}/latin1.jsonl --out {root}/o1.safetensors --steps 1 " + T1, r"line 1 is not UTF-8 text"),
    ("train", "dataset line a list", "train --backbone tiny --data {root}/notobject.jsonl --out {root}/o1.safetensors --steps 1 " + T1, r"line 1 is not a JSON object"),
    ("train", "dataset question a list", "train --backbone tiny --data {root}/qlist.jsonl --out {root}/o1.safetensors --steps 1 " + T1, r"'question' must be a string, not list"),
    ("train", "dataset image path over the text limit", "train --backbone tiny --data {root}/longpath.jsonl --out {root}/o1.safetensors --steps 1 " + T1, r"'image' is 5,004 characters"),
    ("train", "dataset image name too long for the filesystem", "train --backbone tiny --data {root}/longname.jsonl --out {root}/o1.safetensors --steps 1 --no-progress --val-fraction 0 " + T1, r"1 bad image"),
    ("train", "dataset image a directory", "train --backbone tiny --data {root}/imgdir.jsonl --out {root}/o1.safetensors --steps 1 --no-progress --val-fraction 0 " + T1, r"1 bad image"),
    ("train", "missing dataset", "train --backbone tiny --data {root}/none.jsonl --out {root}/o1.safetensors", r"does not exist"),
    ("train", "backbone parts format_version 'one'", "train --backbone tiny --backbone-parts {root}/parts_fv.safetensors --data {data} --out {root}/o1.safetensors --steps 1 " + T1, r"format version 'one' is not a number"),
    ("train", "--resume without a checkpoint", "train --backbone tiny --data {data} --out {root}/o1.safetensors --resume", r"no checkpoint at"),
    ("train", "--resume from a pickle that runs code", "train --backbone tiny --data {data} --out {root}/o1.safetensors --resume --checkpoint {root}/evil.ckpt --no-progress " + T1, r"checkpoint .*evil.ckpt cannot be read \(it names the Python global posix.system"),
    # --- eval --------------------------------------------------------------------------------------------------
    ("eval", "negative threads", "eval --backbone tiny --data {data} --threads -1", r"--threads: must be a whole number >= 1"),
    ("eval", "--limit 0", "eval --backbone tiny --data {data} --limit 0", r"--limit: must be a whole number >= 1"),
    ("eval", "--batch-size 0", "eval --backbone tiny --data {data} --batch-size 0", r"--batch-size: must be a whole number >= 1"),
    ("eval", "adapter format_version 'one'", "eval --backbone tiny --adapter {root}/fv.safetensors --data {data}", r"format_version 'one'"),
    ("eval", "--split val without a recorded split", "eval --backbone tiny --data {data} --split val", r"needs an --adapter that records its split"),
    ("eval", "dataset line not JSON", "eval --backbone tiny --data {root}/badjson.jsonl", r"line 2 is not valid JSON"),
    # --- info --------------------------------------------------------------------------------------------------
    ("info", "adapter format_version 'one'", "info {root}/fv.safetensors", r"format_version 'one'"),
    ("info", "adapter __metadata__ a list", "info {root}/meta_list.safetensors", r"__metadata__ is not a string -> string table"),
    ("info", "adapter_config not JSON", "info {root}/cfg_notjson.safetensors", r"adapter_config .* is not JSON"),
    ("info", "random bytes", "info {root}/random.bin", r"not a crome-edge file"),
    ("info", "zip that is not a checkpoint", "info {root}/notckpt.zip", r"a zip archive, but not a training checkpoint"),
    ("info", "missing path", "info {root}/none.safetensors", r"does not exist"),
    ("info", "manifest a list", "info {b_manifest_list}", r"not a crome-edge bundle manifest"),
    ("info", "manifest files a list", "info {b_files_list}", r"`files` must map file names"),
    ("info", "manifest lists ../secret/passwd", "info {b_dotdot} --verify", r"not a plain file name"),
    ("info", "manifest lists an absolute path", "info {b_absolute} --verify", r"not a plain file name"),
    ("info", "symlinked graph to outside", "info {b_symlink} --verify", r"symbolic link"),
    ("info", "manifest not UTF-8", "info {b_latin1}", r"not UTF-8 text"),
    ("info", "manifest format_version a string", "info {b_fv_string}", r"format_version must be an integer"),
    ("info", "precision int3", "info {b_int3}", r"precision 'int3'"),
    ("info", "prompt.text a number", "info {b_ptext}", r"text must be a string"),
    ("info", "prompt stop_tokens a string", "info {b_stop_str}", r"stop_tokens must be a list"),
    ("info", "generation temperature 'hot'", "info {b_hot}", r"generation temperature must be a number, got 'hot'"),
    ("info", "image_std zero", "info {b_std0}", r"image_std must be > 0"),
    ("info", "d_model a string", "info {b_dmodel}", r"d_model must be a whole number >= 1, got 'x'"),
    ("info", "altered graph", "info {b_altered} --verify", r"was altered"),
    # --- data synth / data video -----------------------------------------------------------------------------
    ("data synth", "--force on a directory that is not a dataset", "data synth --out {root}/victim --n 2 --size 32 --force", r"--force replaces a synthetic dataset, and .* is not one"),
    ("data synth", "--size 20000", "data synth --out {root}/ds_big --n 2 --size 20000", r"--size must be 32..1024 pixels, got 20000"),
    ("data synth", "--size 8", "data synth --out {root}/ds_small --n 2 --size 8", r"--size must be 32..1024"),
    ("data synth", "--n 0", "data synth --out {root}/ds_none --n 0", r"--n must be at least 1"),
    ("data synth", "--n past the split's seeds", "data synth --out {root}/ds_many --n 20000000", r"runs past its end"),
    ("data synth", "negative --seed", "data synth --out {root}/ds_neg --n 2 --seed -1", r"--seed: must be a whole number >= 0"),
    ("data synth", "read-only directory", "data synth --out {unwritable}/ds --n 2 --size 32", r"cannot write in"),
    ("data synth", "--out is a file", "data synth --out {adapter} --n 2", r"exists and is not a directory"),
    ("data synth", "parent missing", "data synth --out {root}/no/such/ds --n 2", r"parent directory .* does not exist"),
    ("data video", "--size not WxH", "data video --out {root}/v.avi --size big", r"--size must look like 320x240"),
    ("data video", "--size 20000x20000", "data video --out {root}/v.avi --size 20000x20000 --frames 1", r"camera size must be 32x32 to 4096x4096"),
    ("data video", "--fps 0", "data video --out {root}/v.avi --fps 0", r"--fps: must be a finite number > 0"),
    ("data video", "--frames 0", "data video --out {root}/v.avi --frames 0", r"--frames: must be a whole number >= 1"),
    ("data video", "H.264 file name", "data video --out {root}/v.mkv --frames 1", r"must end in"),
    # --- export ------------------------------------------------------------------------------------------------
    ("export", "negative threads", "export --adapter {adapter} --out {root}/e.bundle --threads -1", r"--threads: must be a whole number >= 1"),
    ("export", "precision int3", "export --adapter {adapter} --out {root}/e.bundle --precision int3", r"--precision 'int3' is not one of"),
    ("export", "opset 5", "export --adapter {adapter} --out {root}/e.bundle --opset 5", r"--opset 5 is not supported"),
    ("export", "--eval-limit 0", "export --adapter {adapter} --out {root}/e.bundle --eval-limit 0", r"--eval-limit: must be a whole number >= 1"),
    ("export", "adapter format_version 'one'", "export --adapter {root}/fv.safetensors --out {root}/e.bundle", r"format_version 'one'"),
    ("export", "adapter names a backbone directory", "export --adapter {root}/bb_path.safetensors --out {root}/e.bundle", r"not a registered name"),
    ("export", "--out . --force (not a bundle)", "export --adapter {adapter} --out {root} --force", r"--force replaces only a bundle, and .* is not one"),
    ("export", "--calib neither a count nor a directory", "export --adapter {adapter} --out {root}/e.bundle --calib lots", r"--calib lots: neither a frame count"),
    ("export", "--data missing", "export --adapter {adapter} --out {root}/e.bundle --data {root}/none.jsonl", r"no such dataset"),
    # --- run (torch-free) --------------------------------------------------------------------------------------
    ("run", "1x60000 image", "run --bundle {bundle} --image {root}/wide.png --prompt hi " + T1, r"60000x1, a side over the 32,768-pixel limit"),
    ("run", "truncated TIFF", "run --bundle {bundle} --image {root}/trunc.tif --prompt hi " + T1, r"truncated"),
    ("run", "decompression bomb header", "run --bundle {bundle} --image {root}/bomb.png --prompt hi " + T1, r"over the 40,000,000-pixel limit"),
    ("run", "invalid UTF-8 prompt", "run --bundle {bundle} --image {root}/ok.png --prompt {not_utf8} " + T1, r"the prompt is not valid UTF-8"),
    ("run", "prompt over the context", "run --bundle {bundle} --image {root}/ok.png --prompt {q300} " + T1, r"the question is 300 tokens; .*template's \d+ tokens .* at most \d+ tokens"),
    ("run", "100k-character prompt", "run --bundle {bundle} --image {root}/ok.png --prompt {q100k} " + T1, r"over the 4,000-character limit"),
    ("run", "negative threads", "run --bundle {bundle} --image {root}/ok.png --prompt hi --threads -1", r"--threads: must be a whole number >= 1"),
    ("run", "negative seed", "run --bundle {bundle} --image {root}/ok.png --prompt hi --seed -1", r"--seed: must be a whole number >= 0"),
    ("run", "--repeat 0", "run --bundle {bundle} --image {root}/ok.png --prompt hi --repeat 0", r"--repeat: must be a whole number >= 1"),
    ("run", "--top-p 0", "run --bundle {bundle} --image {root}/ok.png --prompt hi --top-p 0", r"--top-p: must be a finite number > 0"),
    ("run", "--temperature nan", "run --bundle {bundle} --image {root}/ok.png --prompt hi --temperature nan", r"--temperature: must be a finite number >= 0"),
    ("run", "not a bundle", "run --bundle {root}/images --image {root}/ok.png --prompt hi", r"not a crome-edge bundle"),
    ("run", "prompt.text a number", "run --bundle {b_ptext} --image {root}/ok.png --prompt hi " + T1, r"text must be a string"),
    ("run", "generation temperature 'hot'", "run --bundle {b_hot} --image {root}/ok.png --prompt hi " + T1, r"generation temperature must be a number, got 'hot'"),
    ("run", "image_std zero", "run --bundle {b_std0} --image {root}/ok.png --prompt hi " + T1, r"image_std must be > 0"),
    ("run", "bundle adapter_config not JSON", "run --bundle {b_adapter_cfg} --image {root}/ok.png --prompt hi " + T1, r"adapter_config .* is not JSON"),
    ("run", "bundle adapter_config a list", "run --bundle {b_adapter_list} --image {root}/ok.png --prompt hi " + T1, r"adapter_config must be"),
    ("run", "report.json not UTF-8", "run --bundle {b_report} --image {root}/ok.png --prompt hi " + T1, r"report.json .* is not valid JSON"),
    ("run", "vision graph declaring 10000 queries", "run --bundle {b_vision10k_static} --image {root}/ok.png --prompt hi " + T1, r"visual_embeds has 10000 on axis 1, expected 4"),
    ("run", "vision graph returning 10000 queries", "run --bundle {b_vision10k} --image {root}/ok.png --prompt hi " + T1, r"vision.onnx returned \(1, 10000, 64\), the manifest says \(1, 4, 64\)"),
    ("run", "manifest lists ../secret/passwd", "run --bundle {b_dotdot} --image {root}/ok.png --prompt hi " + T1, r"not a plain file name"),
    ("run", "symlinked graph to outside", "run --bundle {b_symlink} --image {root}/ok.png --prompt hi " + T1, r"symbolic link"),
    ("run", "altered graph", "run --bundle {b_altered} --image {root}/ok.png --prompt hi " + T1, r"was altered"),
    # --- serve (torch-free; every row fails before the server binds a port) ------------------------------------
    ("serve", "negative threads", "serve --bundle {bundle} --camera none --threads -1", r"--threads: must be a whole number >= 0"),
    ("serve", "--port 70000", "serve --bundle {bundle} --camera none --port 70000", r"--port 70000 is not a port"),
    ("serve", "--watch without a camera", "serve --bundle {bundle} --camera none --watch hi", r"--watch needs a camera"),
    ("serve", "empty --api-key", "serve --bundle {bundle} --camera none --api-key {blank}", r"--api-key is empty"),
    ("serve", "not a bundle", "serve --bundle {root}/images --camera none --port 0", r"not a crome-edge bundle"),
    ("serve", "--min-margin over 1", "serve --bundle {bundle} --camera none --min-margin 1.5",
     r"--min-margin: must be a finite number >= 0 and <= 1, got '1.5'"),
    ("serve", "--min-margin negative", "serve --bundle {bundle} --camera none --min-margin -0.1",
     r"--min-margin: must be a finite number >= 0 and <= 1"),
    ("serve", "--min-margin nan", "serve --bundle {bundle} --camera none --min-margin nan", r"--min-margin: must be a finite number"),
    ("serve", "--drop-below-margin alone", "serve --bundle {bundle} --camera none --drop-below-margin",
     r"--drop-below-margin needs --min-margin X"),
    ("serve", "--min-margin without a camera", "serve --bundle {bundle} --camera none --min-margin 0.2",
     r"--min-margin applies to watch answers, which need a camera"),
    # --- verify, triton-repo, tritonserver, client (torch-free) -------------------------------------------------
    ("verify", "not a bundle", "verify {root}/images", r"not a crome-edge bundle|not a bundle"),
    ("verify", "negative threads", "verify {bundle} --threads -1", r"--threads: must be a whole number >= 1"),
    ("triton-repo", "not a bundle", "triton-repo {root}/images {root}/repo", r"not a crome-edge bundle"),
    ("triton-repo", "--max-batch-size 0", "triton-repo {bundle} {root}/repo --max-batch-size 0", r"--max-batch-size: must be a whole number >= 1"),
    ("triton-repo", "out exists", "triton-repo {bundle} {root}", r"already exists; give a new directory"),
    ("tritonserver", "no repository", "tritonserver", r"give the model repository"),
    ("tritonserver", "negative --http-port", "tritonserver {root} --http-port -1", r"--http-port: must be a whole number >= 0"),
    ("client", "--frames 0", "client --triton http://127.0.0.1:9 --camera demo --frames 0", r"--frames: must be a whole number >= 1"),
    ("client", "empty --prompt", "client --triton http://127.0.0.1:9 --camera demo --prompt {blank}", r"--prompt is empty"),
    ("client", "demo camera seed not a number", "client --triton http://127.0.0.1:9 --camera demo:x", r"demo cameras are demo or demo:SEED"),
    # --- bundle (adapters of a bundle) ----------------------------------------------------------------------------
    ("bundle add", "not a bundle", "bundle add {root}/images --adapter {adapter} " + T1, r"not a crome-edge bundle"),
    ("bundle add", "--eval-limit 0", "bundle add {bundle} --adapter {adapter} --eval-limit 0", r"--eval-limit: must be a whole number >= 1"),
    ("bundle remove", "not a bundle", "bundle remove {root}/images line3", r"not a crome-edge bundle"),
    ("bundle list", "not a bundle", "bundle list {root}/images", r"not a crome-edge bundle"),
    ("bundle add", "--keep out of range", "bundle add {bundle} --adapter {adapter} --replace --keep 21", r"--keep 21 is out of range: keep 0 to 20"),
    ("bundle history", "not a bundle", "bundle history {root}/images colour", r"not a crome-edge bundle"),
    ("bundle history", "no such adapter", "bundle history {bundle} nope", r"has no adapter 'nope' \(it has: colour\)"),
    ("bundle rollback", "no kept versions", "bundle rollback {bundle} colour", r"adapter colour has no kept versions to roll back to"),
    ("bundle rollback", "no such adapter", "bundle rollback {bundle} nope 1f", r"has no adapter 'nope' \(it has: colour\)"),
    # --- other commands ------------------------------------------------------------------------------------------
    ("build-engines", "not a bundle", "build-engines {root}/images", r"not a crome-edge bundle|not a bundle|TensorRT|tensorrt"),
    ("models info", "unknown model", "models info nosuchmodel", r"nosuchmodel"),
    ("models pull", "unknown model", "models pull nosuchmodel", r"nosuchmodel"),
    ("models list", "unknown flag", "models list --bogus", r"unrecognized arguments: --bogus"),
    ("crome-edge", "unknown command", "bogus", r"invalid choice: 'bogus'"),
]

# File loaders called directly: (loader, what is wrong, "module:function arg", error class, pattern)
LOADER_CASES: list[tuple[str, str, str, str, str]] = [
    ("load_dataset", "2M-character line", "crome_edge.data.dataset:load_dataset {root}/q2m.jsonl", "CromeError", r"over the 1 MiB line limit"),
    ("load_dataset", "class folders without a question", "crome_edge.data.dataset:load_dataset {root}/folders", "CromeError", r"pass the question"),
    ("load_dataset", "empty file", "crome_edge.data.dataset:load_dataset {root}/empty.jsonl", "CromeError", r"holds no samples"),
    ("read_manifest", "manifest a list", "crome_runtime.manifest:read_manifest {b_manifest_list}", "BundleError", r"not a crome-edge bundle manifest"),
    ("read_manifest", "../secret/passwd", "crome_runtime.manifest:read_manifest {b_dotdot}", "BundleError", r"not a plain file name"),
    ("load_bundle", "symlinked graph", "crome_runtime.bundle:load_bundle {b_symlink}", "BundleError", r"symbolic link"),
    ("load_bundle", "report.json not UTF-8", "crome_runtime.bundle:load_bundle {b_report}", "BundleError", r"not valid JSON"),
    ("read_adapter_metadata", "format_version 'one'", "crome_edge.adapter_file:read_metadata {root}/fv.safetensors", "AdapterFileError", r"'one' is not a whole number"),
    ("read_adapter_metadata", "truncated", "crome_edge.adapter_file:read_metadata {root}/trunc.safetensors", "AdapterFileError", r"truncated"),
    ("read_safetensors_header", "random bytes", "crome_runtime.safetensors_header:read_header {root}/random.bin", "SafetensorsHeaderError", r"not a safetensors file|truncated"),
    ("read_safetensors_header", "header length past the end", "crome_runtime.safetensors_header:read_header {root}/huge_header.safetensors", "SafetensorsHeaderError", r"header length field"),
    ("read_parts_metadata", "format_version 'one'", "crome_edge.backbones.parts_file:read_parts_metadata {root}/parts_fv.safetensors", "CromeError", r"'one' is not a number"),
    ("load_checkpoint", "pickle that runs code", "crome_edge.training.checkpoint:load_checkpoint {root}/evil.ckpt", "CromeError", r"cannot be read"),
    ("load_image", "truncated JPEG", "crome_runtime.preprocess:load_image {root}/trunc.jpg", "ImageError", r"truncated|could not decode"),
    ("load_image", "BMP claiming 30000x30000", "crome_runtime.preprocess:load_image {root}/bomb.bmp", "ImageError", r"over the 40,000,000-pixel limit"),
    ("load_backbone", "config.json a list", "crome_edge.backbones.registry:load_backbone {root}/hf_list", "CromeError", r"must hold a JSON object"),
]


# --- fixtures ---------------------------------------------------------------------------------------------------


def _safetensors(path: Path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _read_safetensors(path: Path) -> tuple[dict, bytes]:
    blob = path.read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + length]), blob[8 + length:]


def _forge_adapter(source: Path, target: Path, **metadata) -> Path:
    header, data = _read_safetensors(source)
    header["__metadata__"].update(metadata)
    _safetensors(target, header, data)
    return target


def _forge_bundle(source: Path, target: Path, edit=None, files=None) -> Path:
    """A copy of `source` (hard links) with edit(manifest dict) applied and files(dir) run on the copy; changed
    files get their real sha256 in the manifest, so only the property under test is wrong."""
    shutil.copytree(source, target, copy_function=os.link)
    manifest = json.loads((target / formats.MANIFEST_FILE).read_text())
    if files:
        files(target)
    if edit:
        manifest = edit(manifest) or manifest  # an edit may return a whole new manifest value
    if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict):
        for name, entry in manifest["files"].items():
            path = target / name
            if isinstance(entry, dict) and isinstance(name, str) and "/" not in name and path.is_file() and not path.is_symlink():
                entry.update(sha256=sha256_file(path), bytes=path.stat().st_size)
    (target / formats.MANIFEST_FILE).unlink()  # a link to the source's: replace, never write through
    (target / formats.MANIFEST_FILE).write_text(json.dumps(manifest))
    return target


def _replace(path: Path, data: bytes) -> None:
    path.unlink()  # the copy is a hard link: never write through it
    path.write_bytes(data)


def _vision_10k(path: Path, static: bool) -> None:
    """A vision.onnx with the right inputs whose output has 10000 queries: (batch, 10000, 64) zeros. static: the
    graph declares it (ONNX Runtime infers the shape); else the shape is computed from an input at run time, so
    only the output itself shows it."""
    import onnx
    from onnx import TensorProto, helper

    if static:
        shape = helper.make_tensor("shape", TensorProto.INT64, [3], [1, 10000, 64])
        nodes = [helper.make_node("ConstantOfShape", ["shape"], [formats.OUT_VISUAL_EMBEDS])]
    else:
        shape = helper.make_tensor("rest", TensorProto.INT64, [2], [10000, 64])
        nodes = [helper.make_node("Shape", [formats.IN_INSTRUCTION_IDS], ["ids_shape"], end=1),
                 helper.make_node("Concat", ["ids_shape", "rest"], ["shape"], axis=0),
                 helper.make_node("ConstantOfShape", ["shape"], [formats.OUT_VISUAL_EMBEDS])]
    inputs = [helper.make_tensor_value_info(formats.IN_PIXEL_VALUES, TensorProto.FLOAT, ["batch", 3, 32, 32]),
              helper.make_tensor_value_info(formats.IN_INSTRUCTION_IDS, TensorProto.INT64, ["batch", "length"]),
              helper.make_tensor_value_info(formats.IN_INSTRUCTION_MASK, TensorProto.INT64, ["batch", "length"])]
    output = helper.make_tensor_value_info(formats.OUT_VISUAL_EMBEDS, TensorProto.FLOAT, ["batch", "queries", 64])
    graph = helper.make_graph(nodes, "vision10k", inputs, [output], initializer=[shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path.unlink()
    onnx.save(model, str(path))


def unwritable_dir(tmp: Path) -> Path:
    """A directory this process cannot create files in: a read-only one, or for root (who may write anywhere
    chmod allows nothing) a sysfs directory."""
    directory = tmp / "readonly"
    directory.mkdir()
    directory.chmod(0o555)
    for candidate in (directory, Path("/sys")):
        try:
            (candidate / ".probe").touch()
        except OSError:
            return candidate
        (candidate / ".probe").unlink()
    pytest.skip("no unwritable directory on this machine (root, and /sys is writable)")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-checkpoint",))


def _fixtures(root: Path, bundle: dict) -> dict[str, str]:
    import torch

    f: dict[str, str] = {"root": str(root), "bundle": str(bundle["bundle"]), "data": str(bundle["data"]),
                         "blank": " ", "q100k": "why " * 25_000, "q300": "x" * 300,
                         "not_utf8": b"is it \xff red?".decode("utf-8", "surrogateescape")}
    adapter = root / "adapter.safetensors"
    shutil.copyfile(bundle["adapter"], adapter)
    f["adapter"] = str(adapter)
    (root / "secret").mkdir()
    (root / "secret" / "passwd").write_text("root:x:0:0\n")
    # images
    image = np.full((32, 32, 3), 120, np.uint8)
    (root / "images").mkdir()
    cv2.imwrite(str(root / "ok.png"), image)
    cv2.imwrite(str(root / "images" / "ok.png"), image)
    tif = cv2.imencode(".tif", image)[1].tobytes()
    (root / "trunc.tif").write_bytes(tif[: len(tif) // 2])
    (root / "trunc.png").write_bytes(cv2.imencode(".png", image)[1].tobytes()[:20])
    jpg = cv2.imencode(".jpg", image)[1].tobytes()
    (root / "trunc.jpg").write_bytes(jpg[: len(jpg) // 3])
    cv2.imwrite(str(root / "wide.png"), np.full((1, 60000, 3), 90, np.uint8))
    (root / "bomb.png").write_bytes(png_header(30000, 30000))
    (root / "bomb.bmp").write_bytes(b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + struct.pack("<IiiHH", 40, 30000, 30000, 1, 24)
                                    + b"\0" * 24)
    (root / "text.png").write_text("not an image at all\n")
    (root / "random.bin").write_bytes(np.random.default_rng(0).bytes(300))
    # adapters
    forged = {"fv": {formats.META_FORMAT_VERSION: "one"}, "cfg_list": {formats.META_ADAPTER_CONFIG: "[64, 16]"},
              "cfg_str": {formats.META_ADAPTER_CONFIG: '{"d_model": "x", "rank": 16}'},
              "cfg_extra": {formats.META_ADAPTER_CONFIG: '{"d_model": 64, "rank": 16, "evil": 1}'},
              "cfg_notjson": {formats.META_ADAPTER_CONFIG: "d=64"},
              "stop_str": {formats.META_PROMPT_TEMPLATE: json.dumps({"text": "Q: {question} A:", "stop_tokens": "</s>"})},
              "ptext": {formats.META_PROMPT_TEMPLATE: json.dumps({"text": 5})},
              "training_list": {formats.META_TRAINING: "[1, 2]"},
              "other_weights": {formats.META_BACKBONE_FINGERPRINT: "0" * 64},
              "bb_path": {formats.META_BACKBONE_NAME: str(root / "hf_noweights")}}
    for name, metadata in forged.items():
        _forge_adapter(adapter, root / f"{name}.safetensors", **metadata)
    header, data = _read_safetensors(adapter)
    _safetensors(root / "meta_list.safetensors", {**header, "__metadata__": ["format", "crome-adapter"]}, data)
    blob = adapter.read_bytes()
    (root / "trunc.safetensors").write_bytes(blob[: len(blob) - 100])
    (root / "huge_header.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    _safetensors(root / "parts_fv.safetensors", {"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                                 "__metadata__": {formats.META_FORMAT: formats.PARTS_FORMAT,
                                                                  formats.META_FORMAT_VERSION: "one"}}, b"\0" * 4)
    torch.save({"format": "crome-train-checkpoint", "payload": _Evil()}, root / "evil.ckpt")
    import zipfile

    with zipfile.ZipFile(root / "notckpt.zip", "w") as z:
        z.writestr("hello.txt", "not a checkpoint")
    # HF backbone directories
    from crome_edge.backbones.tiny import byte_level_tokenizer, tiny_config

    for name, config in (("hf_noweights", json.dumps(tiny_config(259).to_dict())), ("hf_badjson", "{not json"),
                         ("hf_list", "[1, 2]")):
        (root / name).mkdir()
        (root / name / "config.json").write_text(config)
        byte_level_tokenizer().save(str(root / name / "tokenizer.json"))
    # datasets
    def jsonl(name: str, *lines) -> None:
        (root / name).write_bytes(b"".join(line if isinstance(line, bytes) else (json.dumps(line) + "\n").encode()
                                           for line in lines))

    ok = {"image": str(root / "ok.png"), "question": "What colour is it?", "answer": "grey"}
    jsonl("q2m.jsonl", {**ok, "question": "q" * 2_000_000})
    jsonl("q5k.jsonl", {**ok, "question": "q" * 5000})
    jsonl("q300.jsonl", {**ok, "question": "x" * 300})
    jsonl("surrogate.jsonl", b'{"image": "ok.png", "question": "bad \\ud800 text", "answer": "a"}\n')
    jsonl("latin1.jsonl", '{"image": "ok.png", "question": "caf\xe9", "answer": "a"}\n'.encode("latin-1"))
    jsonl("notobject.jsonl", [1, 2, 3])
    jsonl("qlist.jsonl", {**ok, "question": ["a", "b"]})
    jsonl("longpath.jsonl", {**ok, "image": "x" * 5000 + ".png"})
    jsonl("longname.jsonl", {**ok, "image": "x" * 300 + ".png"})  # one name over NAME_MAX (255)
    jsonl("imgdir.jsonl", {**ok, "image": str(root / "images")})
    jsonl("badjson.jsonl", ok, b"{not json\n")
    jsonl("empty.jsonl", b"\n\n")
    (root / "folders" / "red").mkdir(parents=True)
    cv2.imwrite(str(root / "folders" / "red" / "a.png"), image)
    (root / "victim").mkdir()
    (root / "victim" / "precious.txt").write_text("keep me\n")
    # bundles
    source = Path(bundle["bundle"])

    def prompt(key, value):
        return lambda m: m["prompt"].__setitem__(key, value)

    def with_adapter_config(value):
        weights = adapter_path(source, "weights").name  # NAME.adapter.safetensors
        return lambda d: _replace(d / weights, _forged_bytes(d / weights, value))

    def symlink_graph(d):
        outside = root / "secret" / formats.VISION_ONNX
        shutil.copyfile(d / formats.VISION_ONNX, outside)
        (d / formats.VISION_ONNX).unlink()
        (d / formats.VISION_ONNX).symlink_to(outside)

    secret = str(root / "secret" / "passwd")
    bundles = {
        "manifest_list": dict(edit=lambda m: [m]),
        "files_list": dict(edit=lambda m: m.__setitem__("files", list(m["files"]))),
        "dotdot": dict(edit=lambda m: m["files"].__setitem__("../secret/passwd", {"sha256": "0" * 64, "bytes": 11, "precision": "data"})),
        "absolute": dict(edit=lambda m: m["files"].__setitem__(secret, {"sha256": "0" * 64, "bytes": 11, "precision": "data"})),
        "symlink": dict(files=symlink_graph),
        "latin1": dict(files=lambda d: None),
        "fv_string": dict(edit=lambda m: m.__setitem__("format_version", "one")),
        "int3": dict(edit=lambda m: m.__setitem__("precision", "int3")),
        "ptext": dict(edit=prompt("text", 7)),
        "stop_str": dict(edit=prompt("stop_tokens", "</s>")),
        "hot": dict(edit=lambda m: m["generation"].__setitem__("temperature", "hot")),
        "std0": dict(edit=lambda m: m["backbone"].__setitem__("image_std", [0, 0, 0])),
        "dmodel": dict(edit=lambda m: m["backbone"].__setitem__("d_model", "x")),
        "adapter_cfg": dict(files=with_adapter_config("not json")),
        "adapter_list": dict(files=with_adapter_config("[64, 16]")),
        "report": dict(files=lambda d: _replace(d / formats.REPORT_FILE, b"\xff\xfe{")),
        "vision10k": dict(files=lambda d: _vision_10k(d / formats.VISION_ONNX, static=False)),
        "vision10k_static": dict(files=lambda d: _vision_10k(d / formats.VISION_ONNX, static=True)),
        "altered": dict(),
    }
    for name, how in bundles.items():
        f[f"b_{name}"] = str(_forge_bundle(source, root / f"{name}.bundle", how.get("edit"), how.get("files")))
    latin1 = root / "latin1.bundle" / formats.MANIFEST_FILE
    _replace(latin1, latin1.read_text().replace('"name"', '"n\xe4me"', 1).encode("latin-1"))
    altered = root / "altered.bundle" / formats.DECODER_ONNX
    blob = bytearray(altered.read_bytes())
    blob[len(blob) // 2] ^= 1
    _replace(altered, bytes(blob))
    return f


def _forged_bytes(path: Path, adapter_config: str) -> bytes:
    header, data = _read_safetensors(path)
    header["__metadata__"][formats.META_ADAPTER_CONFIG] = adapter_config
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _argv(template: str, f: dict[str, str]) -> list[str]:
    return [f[token[1:-1]] if re.fullmatch(r"\{\w+\}", token) else token.format(**f) for token in template.split(" ")]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Runs every case in one subprocess under ADDRESS_SPACE_LIMIT -> {case id: result}."""
    bundle = tiny_bundle(tmp_path_factory)
    base = tmp_path_factory.mktemp("bad-inputs")
    root, temp = base / "fixtures", base / "tmp"
    root.mkdir(), temp.mkdir()
    f = _fixtures(root, bundle)
    f["unwritable"] = str(unwritable_dir(base))
    cases = [{"name": case_id(c), "argv": _argv(c[2], f)} for c in CASES]
    for c in LOADER_CASES:
        call, *args = _argv(c[2], f)
        cases.append({"name": case_id(c), "call": call, "args": args})
    env = {**os.environ, "TMPDIR": str(temp), "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2",
           "CROME_EDGE_CACHE": str(base / "cache"), "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, str(RUNNER), str(ADDRESS_SPACE_LIMIT), str(root), str(root / "secret"), str(temp)],
                          input=json.dumps(cases, ensure_ascii=True), capture_output=True, text=True, env=env, cwd=root,
                          timeout=900)
    done = {r["name"]: r for r in map(json.loads, proc.stdout.splitlines())}
    if len(done) < len(cases):
        running = cases[len(done)]["name"]
        pytest.fail(f"the runner stopped (status {proc.returncode}) during case {running!r}: {proc.stderr[-3000:]}")
    assert not (root / "pwned-by-checkpoint").exists(), "a checkpoint ran code while loading"
    assert (root / "victim" / "precious.txt").read_text() == "keep me\n"
    return done


def case_id(case) -> str:
    return f"{case[0]}: {case[1]}"


def _no_escapes(result: dict) -> None:
    assert result.get("exception") is None, f"{result['exception']}: {result.get('message')}\n{result.get('traceback')}"
    assert "Traceback" not in result["output"], result["output"]
    assert result["opened"] == [], f"opened files outside its place: {result['opened']}"
    assert result["changed"] == [], f"wrote or changed {result['changed']}"
    assert not [n for n in result["temp_left"] if "crome" in n or "partial" in n or ".tmp-" in n], result["temp_left"]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_command_refuses_bad_input_in_one_line(results, case):
    result = results[case_id(case)]
    _no_escapes(result)
    assert result["rc"] == 2, f"exit status {result['rc']}; output:\n{result['output']}"
    errors = [line for line in result["output"].splitlines() if re.match(r"crome-edge[\w -]*: error: ", line)]
    assert len(errors) == 1, f"expected one error line, got:\n{result['output']}"
    assert re.search(case[3], errors[0]), f"{case[3]!r} not in {errors[0]!r}"


@pytest.mark.parametrize("case", LOADER_CASES, ids=case_id)
def test_loader_raises_its_own_error(results, case):
    result = results[case_id(case)]
    assert result["exception"] == case[3], f"{result.get('exception')}: {result.get('message')}\n{result.get('traceback')}"
    assert re.search(case[4], result["message"]), result["message"]
    assert "\n" not in result["message"].strip(), result["message"]
    result = {**result, "exception": None}
    _no_escapes(result)


def cli_commands() -> list[str]:
    """Every command line the CLI's command table makes, sub-commands spelled out ("data synth", "bundle add")."""
    from crome_cli.main import build_parser

    def leaves(parser: argparse.ArgumentParser, prefix: tuple[str, ...]):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield " ".join(prefix)
        for action in subs:
            for name, sub in action.choices.items():
                yield from leaves(sub, prefix + (name,))

    return list(leaves(build_parser(), ()))


def test_every_command_has_cases():
    """Read from the CLI's command table, so a new command (or sub-command) fails here until it has bad-input rows."""
    commands = cli_commands()
    assert {"serve", "bundle add", "triton-repo", "tritonserver", "client", "run", "data synth"} <= set(commands)
    counts = Counter(c[0] for c in CASES)
    missing = [command for command in commands if not counts[command]]
    assert not missing, f"commands without a bad-input row in CASES: {missing}"
    assert not set(counts) - set(commands) - {"crome-edge"}, "a row names no command of the CLI"
    assert len({case_id(c) for c in CASES + LOADER_CASES}) == len(CASES) + len(LOADER_CASES)  # ids are distinct
