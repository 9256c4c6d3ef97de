"""
# Errors a run reports in one line

Every problem the trainer can name (a setting that cannot work, a damaged or hostile file, a run that
diverged) is an `ExperimentError`. Its message is the whole report: what was expected, which file or
setting, what to do. `exit_status` says whose fault it is, so the command line maps any of them to an
exit code in one place: 1 for a file or a run, 2 for a setting the user typed.
"""


class ExperimentError(Exception):
    """A problem reported as its message alone, with the exit status the command line returns."""

    exit_status = 1


class UsageError(ExperimentError, ValueError):
    """A setting that cannot work; the message says what was expected. The command line exits with 2."""

    exit_status = 2
