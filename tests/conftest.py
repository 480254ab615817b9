"""Test-wide settings. The Hugging Face hub must never be reached: no network here, and real
users' air-gapped clusters behave the same. huggingface_hub reads these only at import time."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# One BLAS/OpenMP thread per test worker: pytest-xdist already runs one worker per core, and
# oversubscribed OpenMP threads made torch tests 20-40x slower on the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
