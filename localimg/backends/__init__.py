"""Inference backends: the contract in `base`, diffusers-backed implementations beside it."""

import os

# localimg is an offline server: nothing below may reach a model hub or send telemetry. huggingface_hub and
# transformers read these once, when first imported, so they must be set before anything imports them. A user's
# HF_HUB_OFFLINE=0 is overridden on purpose (weights come from local folders or a pre-filled cache only).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["DISABLE_TELEMETRY"] = "1"
