"""What `main.py` runs: configuration, run folders and logging, summary and report."""
