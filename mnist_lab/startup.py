"""Importing TensorFlow without its start-up noise on stderr.

On a machine without a GPU, TensorFlow's C++ side writes 4-5 lines at import and at the first
device query (`WARNING: All log messages before absl::InitializeLog() ...`, `Could not find
cuda drivers ...`, `failed call to cuInit: ... (303)`), before Python's logging or
TF_CPP_MIN_LOG_LEVEL can stop them. They would land in the middle of a command's own output
(and glued onto a sweep's live display). `import_tensorflow()` runs the import and the device
query with file descriptor 2 pointed at a temporary file, then passes on every line that is not
one of those known start-up notices: a real error still reaches the terminal.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import tempfile

# What TensorFlow says while starting on a machine without CUDA (or while probing for it).
NOISE = re.compile(
    r"absl::InitializeLog|cudart_stub|cuda_platform|cuInit|Could not find cuda drivers|cuda_(dnn|fft|blas)\.cc"
    r"|Unable to register cu(DNN|FFT|BLAS) factory|TF-TRT Warning|computation_placer|oneDNN custom operations"
    r"|TF_ENABLE_ONEDNN_OPTS|This TensorFlow binary is optimized|rebuild TensorFlow with the appropriate compiler"
    r"|cpu_feature_guard|port\.cc:\d+\] oneDNN"
)


@functools.lru_cache(maxsize=1)
def import_tensorflow():
    """Import TensorFlow once, and find its devices, keeping its start-up notices off stderr."""
    fd = 2  # the process's stderr, whatever sys.stderr has been replaced with
    try:
        saved = os.dup(fd)
    except OSError:  # no real stderr (embedded interpreter): nothing to keep clean
        import tensorflow as tf

        return tf
    with tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        os.dup2(capture.fileno(), fd)
        try:
            import tensorflow as tf

            # CUDA is probed (and cuInit fails on a CPU machine) at the first device query.
            tf.config.list_physical_devices()
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
        capture.seek(0)
        said = capture.read().decode(errors="replace")
    for line in said.splitlines():
        if line.strip() and not NOISE.search(line):
            print(line, file=sys.stderr)
    return tf
