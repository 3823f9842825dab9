"""Connecting to Ray: the cluster a job was submitted to, an address the user gave, or an embedded local Ray."""

from __future__ import annotations

import contextlib
import logging
import os

logger = logging.getLogger(__name__)
MIN_LOCAL_CPUS = 4
TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
DEFAULT_TRAIN_POLL_S = "0.5"


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Initialise Ray once per process.

    Inside `ray job submit` RAY_ADDRESS is set and we join that cluster; with neither an address nor
    RAY_ADDRESS we start a local Ray embedded in this process (the laptop path). num_cpus applies to
    the embedded Ray only: logical CPUs may exceed physical ones so small actors can be co-scheduled.
    """
    import ray

    # Ray Train's controller polls its workers every 2 s by default, and a worker's report() (metrics or a
    # checkpoint) waits for that poll: a short run spent ~10 of its 22 s waiting (measured on 2 CPU cores).
    # Drivers pass this variable on to the controller; a cluster that wants fewer polls sets it higher.
    os.environ.setdefault(TRAIN_POLL_ENV, DEFAULT_TRAIN_POLL_S)
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    target = address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(log_to_driver=True, configure_logging=False)
    if target:
        logger.info("joining the Ray cluster at %s", target)
        ray.init(address=target, **kwargs)
    else:
        # Logical CPUs are scheduling tokens, not threads: read tasks, tokenizer actors and training
        # workers must be able to co-exist on a 2-core laptop, or a pipeline can wait on itself.
        num_cpus = num_cpus or max(os.cpu_count() or 1, MIN_LOCAL_CPUS)
        logger.info("starting an embedded local Ray (num_cpus=%s)", num_cpus)
        # the dashboard (on 127.0.0.1) shows the run, and Ray Train's own bookkeeping uses its state API
        dashboard = os.environ.get("CAREGPT_DASHBOARD", "1") == "1"
        # address="local": always a new instance. Without it ray.init joins whatever cluster `ray start` last
        # recorded in /tmp/ray (someone else's, on a shared machine).
        # A temp dir of its own, recording this cluster as "the current one": the driver of a Ray job submitted here
        # joins the cluster its temp dir records, and without a record Ray picks any Ray process it finds on the
        # machine (measured: the fine-tuning service's jobs trained on another user's Ray and died with it).
        import tempfile

        from ray._private.utils import write_ray_address

        temp_dir = os.environ.get("CAREGPT_RAY_TEMP_DIR") or tempfile.mkdtemp(prefix=f"ray-{os.getpid()}-", dir="/tmp")
        with _free_dashboard_agent_port():
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1", _temp_dir=temp_dir, **kwargs)
        write_ray_address(ray.get_runtime_context().gcs_address, temp_dir)
    ray.data.DataContext.get_current().enable_progress_bars = os.environ.get("CAREGPT_PROGRESS", "1") == "1"


@contextlib.contextmanager
def _free_dashboard_agent_port():
    """Start the embedded Ray's dashboard agent on a free port instead of Ray's fixed 52365.

    ray.init has no option for that port, and on a machine where another Ray already holds 52365 the agent
    of this one runs without its HTTP server: its job API then answers every submission with "No available
    agent to submit job" (the fine-tuning service submits Ray jobs). `ray start` takes
    --dashboard-agent-listen-port; for ray.init the parameter object it builds gets the port here.
    """
    import socket

    from ray._private import parameter

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    original = parameter.RayParams

    class _Params(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kw):
            kw.setdefault("dashboard_agent_listen_port", port)
            super().__init__(*args, **kw)

    parameter.RayParams = _Params
    try:
        yield
    finally:
        parameter.RayParams = original


def available_cpus() -> int:
    import ray

    return max(1, int(ray.available_resources().get("CPU", 1)))
