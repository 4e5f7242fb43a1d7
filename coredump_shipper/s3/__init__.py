"""Talking to S3: the client, the one way to call it, retries, and streaming multipart uploads."""
