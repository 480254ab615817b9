"""Test-wide settings. The Hugging Face hub must never be reached: no network here, and real
users' air-gapped clusters behave the same. huggingface_hub reads these only at import time."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
