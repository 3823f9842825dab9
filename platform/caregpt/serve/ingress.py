"""Direct ingress: the front proxy forwards straight to the app's ingress replicas on its node.

Through Ray Serve's HTTP proxy a request makes two extra hops (proxy actor -> replica over Ray,
then the streamed answer back as Ray objects): a trivial streaming deployment gives its first byte
in ~10 ms on a 2-core machine, 1.7 ms when its replica serves HTTP itself. Ray Serve's direct
ingress (``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``, experimental in Ray 2.60) has each ingress replica
run an HTTP server of its own, on a port from 30000-31000 bound to Serve's HTTP host (127.0.0.1
behind the front). :class:`IngressTargets` asks the Serve controller each second which replicas of
the app are running and on which ports, and the front sends each request to the local replica with
the fewest requests in flight; with none (direct ingress off on the cluster, replicas on other
nodes only, a replica that just went away) it forwards to Serve's proxy as before.

Internals used, to check on Ray upgrades: the controller's ``get_target_groups`` (what Ray's own
HAProxy manager reads) and the controller actor's name and namespace.

Direct ingress must be on when the cluster starts (the controller and replicas read it at import):
:func:`prefer_direct_ingress` sets it for an embedded Ray; an operator who sets
``RAY_SERVE_ENABLE_DIRECT_INGRESS=0`` keeps Serve's proxy path.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence

logger = logging.getLogger("caregpt.serve.ingress")

DIRECT_INGRESS_ENV = "RAY_SERVE_ENABLE_DIRECT_INGRESS"
# Ray keeps a stopping ingress replica serving for this long (default 30 s) so that load balancers polling
# at their own pace notice it is gone; the front polls every second, and `caregpt serve` must stop within 30 s.
DRAINING_PERIOD_ENV = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
DRAINING_PERIOD_S = "2"
POLL_S = 1.0


def prefer_direct_ingress() -> None:
    """Turn Serve's direct ingress on for a Ray started after this call (in this process), unless the operator chose."""
    os.environ.setdefault(DIRECT_INGRESS_ENV, "1")
    os.environ.setdefault(DRAINING_PERIOD_ENV, DRAINING_PERIOD_S)


def local_http_ports(target_groups: Sequence, app_name: str, node_ip: str) -> tuple[int, ...]:
    """HTTP ports of the app's ingress replicas on this node, from the controller's target groups.

    Without direct ingress the controller lists only Serve's proxies (a group with app_name ''): none then.
    """
    ports = []
    for group in target_groups:
        if group.app_name != app_name or str(getattr(group.protocol, "value", group.protocol)).upper() != "HTTP":
            continue
        ports += [target.port for target in group.targets if target.ip == node_ip and target.port]
    return tuple(sorted(set(ports)))


class IngressTargets:
    """Passes the app's local ingress ports to ``on_change`` every ``poll_s``, from a daemon thread (Ray calls block)."""

    def __init__(self, app_name: str, on_change: Callable[[tuple[int, ...]], None], poll_s: float = POLL_S):
        self.app_name, self.poll_s, self._on_change = app_name, poll_s, on_change
        self.ports: tuple[int, ...] = ()
        self._stop = threading.Event()
        self._polled = threading.Event()
        self._thread = threading.Thread(target=self._run, name="caregpt-ingress-targets", daemon=True)

    def start(self) -> IngressTargets:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def first_ports(self, timeout_s: float = 10.0) -> tuple[int, ...]:
        """The ports after the first poll (waits for it)."""
        self._polled.wait(timeout_s)
        return self.ports

    def describe(self) -> str:
        """Where the front sends requests, for the start-up message."""
        if self.ports:
            return f"straight to {len(self.ports)} ingress replica(s) on this machine (Serve direct ingress)"
        # this process's environment says nothing about a cluster it joined, so name both causes
        return (f"through Serve's HTTP proxy (the cluster runs without {DIRECT_INGRESS_ENV}=1 on its nodes, which would save "
                "~10 ms a request, or no replica of this app runs on this machine)")

    def _run(self) -> None:
        import ray
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

        node_ip = ray.util.get_node_ip_address()
        controller = None
        while not self._stop.is_set():
            try:
                controller = controller or ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
                groups = ray.get(controller.get_target_groups.remote(self.app_name), timeout=10)
                ports = local_http_ports(groups, self.app_name, node_ip)
            except Exception as exc:  # noqa: BLE001 - a controller restart or an older Ray: Serve's proxy meanwhile
                logger.debug("ingress targets unavailable (%s): forwarding through Serve's proxy", type(exc).__name__)
                controller, ports = None, ()
            if ports != self.ports:
                logger.info("front: %s", f"forwarding to {len(ports)} local ingress replica(s) directly" if ports else "forwarding through Serve's proxy")
                self.ports = ports
            # every poll, not only on a change: the front drops a port whose connect failed, and gets it back here
            # while the controller still lists that replica as running
            self._on_change(ports)
            self._polled.set()
            self._stop.wait(self.poll_s)
