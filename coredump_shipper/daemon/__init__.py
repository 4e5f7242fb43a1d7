"""The running daemon: start-up, the watcher, the queue and workers, shutdown."""
