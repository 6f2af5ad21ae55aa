"""Training loops (torch). Not imported by the runtime."""
