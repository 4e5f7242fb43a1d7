"""Kubernetes itself: API access and client, the node's pods, Events, pod filters, the pinned pod record."""
