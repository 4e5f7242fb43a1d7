"""What is stored in the bucket: object keys and metadata, the manifest, ETags, the fleet index."""
