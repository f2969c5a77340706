"""Submit one Ray job with JobSubmissionClient, wait, print {"job_id", "status", "logs"} as JSON.

Run in its own process: Ray caches the authentication token per process, and the test session
may already hold the token of another (local) Ray instance.
usage: python tests/job_client.py DASHBOARD_URL WORKING_DIR RUNTIME_ENV_YAML ENTRYPOINT
"""

import json
import sys
import time

import yaml
from ray.job_submission import JobStatus, JobSubmissionClient


def main(url: str, working_dir: str, runtime_env_path: str, entrypoint: str, timeout: float = 900) -> None:
    client = JobSubmissionClient(url)
    with open(runtime_env_path) as f:
        runtime_env = yaml.safe_load(f)
    runtime_env["working_dir"] = working_dir
    deadline = time.time() + 120
    while True:  # right after `ray start` the node's job agent may not be up yet
        try:
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            break
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.time() > deadline:
                raise
            time.sleep(2)
    deadline = time.time() + timeout
    status = client.get_job_status(job_id)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) and time.time() < deadline:
        time.sleep(3)
        status = client.get_job_status(job_id)
    if status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        client.stop_job(job_id)
    print(json.dumps({"job_id": job_id, "status": str(status), "logs": client.get_job_logs(job_id)}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
