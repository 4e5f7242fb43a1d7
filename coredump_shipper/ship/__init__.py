"""Shipping one core from found to gone: pod, signature, upload, manifest, after-upload policy, limits."""
