"""What the launcher, its worker processes and the fork server agree on: keys, variables, exit codes.

The launcher (:mod:`._launcher`) starts one worker process (:mod:`._worker`) per trial, directly or
through the fork server (:mod:`._fork_server`); they talk through the study's storage (trial user
attributes), the environment and the worker's exit code. Every name of that protocol lives here,
so that the three modules import this one and never each other for a constant.

Example:
    >>> EXIT_TRIAL_ERROR, EXIT_NO_TRIAL
    (3, 4)
"""

from __future__ import annotations

__all__ = [
    "ATTEMPT_KEY",
    "ENV_FORK_SERVER",
    "ENV_SLOT",
    "ENV_STORAGE_URL",
    "ENV_TOKEN",
    "EXIT_NO_TRIAL",
    "EXIT_TRIAL_ERROR",
    "FAIL_REASON_KEY",
    "FORK_SERVER_MODULE",
    "ORPHAN_AFTER_S",
    "RETRY_OF_KEY",
    "WORKER_KEY",
    "WORKER_MODULE",
]

# -- trial user attributes -------------------------------------------------------------------------------
WORKER_KEY = "optkit.worker"      # {"token", "host", "pid", "pid_start", "slot", "devices"}: who runs the trial
ATTEMPT_KEY = "optkit.attempt"    # 1 for a first try, 2 for its first retry...
RETRY_OF_KEY = "optkit.retry_of"  # the number of the trial this one retries
FAIL_REASON_KEY = "optkit.fail_reason"  # why the launcher failed a trial whose process died

# -- environment of a worker process -----------------------------------------------------------------------
ENV_STORAGE_URL = "OPTKIT_STORAGE_URL"  # the storage URL (not on the command line: `ps` shows arguments to everyone)
ENV_TOKEN = "OPTKIT_TOKEN"              # the launcher's token for this process, recorded with its trial
ENV_SLOT = "OPTKIT_SLOT"                # the index of the process's device slot
ENV_FORK_SERVER = "OPTKIT_FORK_SERVER"  # "0" in the launcher's environment: plain processes, no fork server

# -- the worker's exit codes (anything else: the process died) ----------------------------------------------
EXIT_TRIAL_ERROR = 3  # the trial raised (the worker told FAIL itself); the launcher stops the study
EXIT_NO_TRIAL = 4     # the study's budget had no place left for a trial (none was asked for)

# -- the modules the launcher runs with ``python -m`` ------------------------------------------------------
WORKER_MODULE = "lightning_optkit.tuning._pool._worker"
FORK_SERVER_MODULE = "lightning_optkit.tuning._pool._fork_server"

ORPHAN_AFTER_S = 60.0  # a RUNNING trial with no worker record this old lost its process before it said who
