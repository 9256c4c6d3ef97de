"""
# Errors a run reports in one line

Every problem the trainer can name is an `ExperimentError`, whose message is the whole report and whose
`exit_status` says whose fault it is: 1 for a file or a run, 2 for a setting the user typed (`UsageError`).
"""


class ExperimentError(Exception):
    exit_status = 1


class UsageError(ExperimentError, ValueError):
    exit_status = 2
