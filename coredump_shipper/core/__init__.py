"""One core on the node: its file opened safely, its name, its ELF notes, its signature, its facts."""
