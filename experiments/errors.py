"""
# Errors a run reports in one line

Every problem the trainer can name (a setting that cannot work, a damaged or hostile file, a diverged
run) is an `ExperimentError` whose message is the whole report: what was expected, which file or
setting, what to do. Its `exit_status` says whose fault it is, so the command line maps any of them to
an exit code in one place: 1 for a file or a run, 2 for a setting the user typed (`UsageError`).
"""


class ExperimentError(Exception):
    exit_status = 1


class UsageError(ExperimentError, ValueError):
    exit_status = 2
