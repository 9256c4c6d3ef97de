"""Speed benchmarks: scripts run as `python -m benchmarks.<name>`; see BENCHMARKS.md for the results."""
