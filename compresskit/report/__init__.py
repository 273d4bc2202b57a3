"""What a run reports: report.json (results.py) and report.md with its plots (markdown.py)."""
