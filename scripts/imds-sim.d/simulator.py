"""The IMDS simulator's core: the simulated instance (`Sim`), its HTTP handler
and server. `scripts/imds-sim` is the command that runs it (see its docstring).
"""

import argparse
import datetime
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import socketserver
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MAX_TTL = 21600  # six hours, AWS's ceiling
SPOT_ACTIONS = ("terminate", "stop", "hibernate")
FAULT_MODES = ("none", "500", "401", "slow", "down")
# AWS gives two minutes between the notice and the interruption.
DEFAULT_INTERRUPTION_SECS = 120
DEFAULT_SLOW_MS = 1000
# Control bodies are tiny; a cap keeps a confused client from pinning a thread.
MAX_BODY = 64 * 1024

DEFAULT_IDENTITY = {
    "instance_id": "i-0123456789abcdef0",
    "instance_type": "m5.large",
    "instance_life_cycle": "spot",
    "availability_zone": "us-east-1a",
    "region": "us-east-1",
    "ami_id": "ami-0abcdef1234567890",
    "hostname": "ip-127-0-0-1.ec2.internal",
    "local_ipv4": "127.0.0.1",
    "account_id": "123456789012",
}


def iso(ts):
    """AWS's metadata timestamp format: whole seconds, UTC, literal Z."""
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


class BadRequest(Exception):
    pass


def _number(body, key, default):
    value = body.get(key, default)
    # bool is an int subclass; `true` as a delay is a typo, not one second.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise BadRequest(f"{key} must be a non-negative number")
    return float(value)


def _only_keys(body, allowed):
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        # Rejecting typos beats silently ignoring them: a misspelt in_secs would
        # otherwise schedule "now" and a test would pass for the wrong reason.
        raise BadRequest(f"unknown keys {unknown}; allowed: {sorted(allowed)}")


def _region_of(zone):
    # us-east-1a -> us-east-1; local zones (us-west-2-lax-1a) keep the same rule.
    return re.sub(r"[a-z]$", "", zone)


class Sim:
    """All mutable state, behind one lock: handler threads run concurrently."""

    def __init__(self, identity, role=None):
        self.lock = threading.Lock()
        # The instance profile's role, if any: the SDKs' default credential chain
        # then finds credentials here, as on an instance (the box uses this).
        self.role = role
        self.initial_identity = dict(identity)
        self.started = time.time()
        # Tokens outlive /_sim/reset on purpose: a client under test holding a
        # cached token would otherwise see 401s that no real instance produces.
        self.tokens = {}  # token -> monotonic expiry
        self._reset_locked()

    def _reset_locked(self):
        self.identity = dict(self.initial_identity)
        self.spot = None        # {"action", "notice_at", "time_at"} (epoch seconds)
        self.rebalance = None   # {"notice_at"}
        self.lifecycle = []     # [(at, state)] in the order they were posted
        self.faults = {"mode": "none", "remaining": 0, "delay_ms": 0}
        self.counters = {
            "requests": 0, "token_puts": 0, "tokens_issued": 0,
            "faults_injected": 0, "by_path": {}, "by_status": {},
        }

    def reset(self):
        with self.lock:
            self._reset_locked()

    # --- tokens -----------------------------------------------------------

    def issue_token(self, ttl):
        now = time.monotonic()
        token = secrets.token_urlsafe(42)
        with self.lock:
            # Pruning here keeps the table bounded by live tokens without a timer.
            for t in [t for t, exp in self.tokens.items() if exp <= now]:
                del self.tokens[t]
            self.tokens[token] = now + ttl
            self.counters["tokens_issued"] += 1
        return token

    def token_valid(self, token):
        with self.lock:
            exp = self.tokens.get(token)
        return exp is not None and time.monotonic() < exp

    # --- faults -----------------------------------------------------------

    def take_fault(self, needs_token):
        """Consume one fault for this request, or return None.

        A 401 fault only makes sense where a token is checked, so a token PUT
        passes through it without using up the count.
        """
        with self.lock:
            f = self.faults
            if f["mode"] == "none" or (f["mode"] == "401" and not needs_token):
                return None
            taken = dict(f)
            if f["remaining"] is not None:
                f["remaining"] -= 1
                if f["remaining"] <= 0:
                    self.faults = {"mode": "none", "remaining": 0, "delay_ms": 0}
            self.counters["faults_injected"] += 1
            return taken

    # --- counters ---------------------------------------------------------

    def count_request(self, path):
        with self.lock:
            c = self.counters
            c["requests"] += 1
            c["by_path"][path] = c["by_path"].get(path, 0) + 1

    def count_status(self, status):
        with self.lock:
            s = self.counters["by_status"]
            s[str(status)] = s.get(str(status), 0) + 1

    def count_token_put(self):
        with self.lock:
            self.counters["token_puts"] += 1

    # --- metadata values --------------------------------------------------

    def lifecycle_state(self, now):
        state = "InService"
        # Latest due entry wins; ties go to the one posted last (stable order).
        due = [(at, i, s) for i, (at, s) in enumerate(self.lifecycle) if at <= now]
        if due:
            state = max(due)[2]
        return state

    def leaves(self):
        """Path under /latest/ -> function(now) giving a body, or None for 404."""
        ident = lambda key: (lambda now: self.identity[key])

        def spot(now):
            s = self.spot
            if s is None or now < s["notice_at"]:
                return None
            return json.dumps({"action": s["action"], "time": iso(s["time_at"])},
                              separators=(",", ":"))

        def termination_time(now):
            s = self.spot
            if s is None or now < s["notice_at"] or s["action"] != "terminate":
                return None
            return iso(s["time_at"])

        def rebalance(now):
            r = self.rebalance
            if r is None or now < r["notice_at"]:
                return None
            return json.dumps({"noticeTime": iso(r["notice_at"])}, separators=(",", ":"))

        roles = {}
        if self.role is not None:
            roles = {
                "meta-data/iam/info": self._role_info,
                f"meta-data/iam/security-credentials/{self.role}": self._role_credentials,
            }
        return {
            **roles,
            "meta-data/ami-id": ident("ami_id"),
            "meta-data/hostname": ident("hostname"),
            "meta-data/local-hostname": ident("hostname"),
            "meta-data/instance-id": ident("instance_id"),
            "meta-data/instance-type": ident("instance_type"),
            "meta-data/instance-life-cycle": ident("instance_life_cycle"),
            "meta-data/local-ipv4": ident("local_ipv4"),
            "meta-data/placement/availability-zone": ident("availability_zone"),
            "meta-data/placement/region": ident("region"),
            "meta-data/spot/instance-action": spot,
            "meta-data/spot/termination-time": termination_time,
            "meta-data/events/recommendations/rebalance": rebalance,
            "meta-data/autoscaling/target-lifecycle-state": self.lifecycle_state,
            "dynamic/instance-identity/document": self._document,
        }

    def _document(self, now):
        """dynamic/instance-identity/document."""
        i = self.identity
        # Pretty-printed like the real service; clients must parse, not match.
        return json.dumps({
            "accountId": i["account_id"],
            "architecture": "x86_64",
            "availabilityZone": i["availability_zone"],
            "imageId": i["ami_id"],
            "instanceId": i["instance_id"],
            "instanceType": i["instance_type"],
            "pendingTime": iso(self.started),
            "privateIp": i["local_ipv4"],
            "region": i["region"],
            "version": "2017-09-30",
        }, indent=2)

    def _role_credentials(self, now):
        """meta-data/iam/security-credentials/ROLE."""
        # Static keys are enough for moto, which accepts any; the shape and
        # the six-hour expiry are AWS's.
        return json.dumps({
            "Code": "Success",
            "LastUpdated": iso(self.started),
            "Type": "AWS-HMAC",
            "AccessKeyId": "testing",
            "SecretAccessKey": "testing",
            "Token": "testing",
            "Expiration": iso(now + MAX_TTL),
        }, indent=2)

    def _role_info(self, now):
        """meta-data/iam/info."""
        i = self.identity
        return json.dumps({
            "Code": "Success",
            "LastUpdated": iso(self.started),
            "InstanceProfileArn": f"arn:aws:iam::{i['account_id']}:instance-profile/{self.role}",
            "InstanceProfileId": "AIPAEXAMPLEINSTANCEPROFILE",
        }, indent=2)

    def lookup(self, rel):
        """Body for /latest/<rel>, or None. Directories list what answers now."""
        now = time.time()
        with self.lock:
            leaves = self.leaves()
            if rel in leaves:
                return leaves[rel](now)
            prefix = rel.rstrip("/") + "/"
            children = []
            for path, fn in sorted(leaves.items()):
                if path.startswith(prefix) and fn(now) is not None:
                    rest = path[len(prefix):]
                    child = rest.split("/", 1)[0] + ("/" if "/" in rest else "")
                    if child not in children:
                        children.append(child)
            # Like AWS, a category with nothing in it (spot/ before a notice) is 404.
            return "\n".join(children) if children else None

    # --- control API ------------------------------------------------------

    def set_spot(self, body):
        _only_keys(body, ("action", "in_secs", "interruption_in_secs"))
        action = body.get("action", "terminate")
        if action not in SPOT_ACTIONS:
            raise BadRequest(f"action must be one of {list(SPOT_ACTIONS)}")
        in_secs = _number(body, "in_secs", 0)
        gap = _number(body, "interruption_in_secs", DEFAULT_INTERRUPTION_SECS)
        notice_at = time.time() + in_secs
        with self.lock:
            self.spot = {"action": action, "notice_at": notice_at,
                         "time_at": notice_at + gap}

    def set_rebalance(self, body):
        _only_keys(body, ("in_secs",))
        in_secs = _number(body, "in_secs", 0)
        with self.lock:
            self.rebalance = {"notice_at": time.time() + in_secs}

    def set_lifecycle(self, body):
        _only_keys(body, ("state", "in_secs"))
        state = body.get("state")
        # Any single token is accepted so warm-pool states (Warmed:Stopped, ...)
        # need no list kept in step with AWS; whitespace would corrupt the body.
        if not isinstance(state, str) or not re.fullmatch(r"\S+", state):
            raise BadRequest("state must be a non-empty string without whitespace")
        in_secs = _number(body, "in_secs", 0)
        with self.lock:
            self.lifecycle.append((time.time() + in_secs, state))

    def set_faults(self, body):
        _only_keys(body, ("mode", "count", "delay_ms"))
        mode = body.get("mode")
        if isinstance(mode, int) and not isinstance(mode, bool):
            mode = str(mode)
        if mode not in FAULT_MODES:
            raise BadRequest(f"mode must be one of {list(FAULT_MODES)}")
        count = body.get("count", 1)
        # null means "every request until mode none or reset", for outage tests.
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                                  or count < 1):
            raise BadRequest("count must be a positive integer or null")
        delay_ms = _number(body, "delay_ms", DEFAULT_SLOW_MS if mode == "slow" else 0)
        with self.lock:
            if mode == "none":
                self.faults = {"mode": "none", "remaining": 0, "delay_ms": 0}
            else:
                self.faults = {"mode": mode, "remaining": count, "delay_ms": delay_ms}

    def set_identity(self, body):
        _only_keys(body, DEFAULT_IDENTITY)
        for key, value in body.items():
            if not isinstance(value, str) or not re.fullmatch(r"\S+", value):
                raise BadRequest(f"{key} must be a non-empty string without whitespace")
        with self.lock:
            self.identity.update(body)
            if "availability_zone" in body and "region" not in body:
                self.identity["region"] = _region_of(body["availability_zone"])

    def state(self):
        now = time.time()
        mono = time.monotonic()
        with self.lock:
            spot = None
            if self.spot:
                spot = {"action": self.spot["action"],
                        "notice_time": iso(self.spot["notice_at"]),
                        "time": iso(self.spot["time_at"]),
                        "visible": now >= self.spot["notice_at"]}
            rebalance = None
            if self.rebalance:
                rebalance = {"notice_time": iso(self.rebalance["notice_at"]),
                             "visible": now >= self.rebalance["notice_at"]}
            return {
                "now": iso(now),
                "identity": dict(self.identity),
                "spot": spot,
                "rebalance": rebalance,
                "lifecycle": {
                    "state": self.lifecycle_state(now),
                    "pending": [{"state": s, "at": iso(at)}
                                for at, s in self.lifecycle if at > now],
                },
                "faults": dict(self.faults),
                "live_tokens": sum(1 for exp in self.tokens.values() if exp > mono),
                "counters": json.loads(json.dumps(self.counters)),
            }


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so clients with pooled connections (hyper, the AWS SDK) keep them,
    # as they would against the real service; every reply sets Content-Length.
    protocol_version = "HTTP/1.1"
    sim = None  # set by main()

    def version_string(self):
        return "EC2ws"  # what the real service sends as Server

    # --- plumbing ---------------------------------------------------------

    def _read_body(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            raise BadRequest("bad or oversized Content-Length")
        return self.rfile.read(length) if length else b""

    def _reply(self, status, body="", ctype="text/plain", headers=()):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        if self._imds:
            self.sim.count_status(status)

    def _json(self, status, obj):
        self._reply(status, json.dumps(obj, indent=2) + "\n", "application/json")

    def log_message(self, fmt, *args):
        sys.stderr.write("imds-sim: %s %s\n" % (self.address_string(), fmt % args))
        sys.stderr.flush()

    def log_request(self, code="-", size="-"):
        ms = (time.monotonic() - getattr(self, "_t0", time.monotonic())) * 1000
        self.log_message('"%s %s" %s %.1fms', self.command, self.path, code, ms)

    def _dispatch(self):
        self._t0 = time.monotonic()
        path = urlsplit(self.path).path
        self._imds = not path.startswith("/_sim/")
        try:
            if self._imds:
                self._imds_request(path)
            else:
                self._control(path)
        except BadRequest as e:
            if self._imds:
                self._reply(400, "Bad Request")
            else:
                self._json(400, {"error": str(e)})

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _dispatch

    # --- IMDS -------------------------------------------------------------

    def _imds_request(self, path):
        sim = self.sim
        sim.count_request(path)
        # IMDS ignores request bodies, but an unread one would corrupt the next
        # request on a kept-alive connection.
        self._read_body()
        is_token_put = path == "/latest/api/token"
        needs_token = not is_token_put and path.startswith("/latest/")
        fault = sim.take_fault(needs_token and self.command in ("GET", "HEAD"))
        if fault:
            mode = fault["mode"]
            if mode == "down":
                # No status line at all: the client sees the peer hang up, which
                # is what a hypervisor-side IMDS outage looks like from the guest.
                self.close_connection = True
                self.log_message('"%s %s" dropped (fault down)', self.command, self.path)
                sim.count_status("dropped")
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            if mode == "500":
                return self._reply(500, "Internal Server Error")
            if mode == "401":
                return self._reply(401, "Unauthorized")
            if mode == "slow":
                time.sleep(fault["delay_ms"] / 1000)

        if is_token_put:
            return self._token_put()
        if self.command not in ("GET", "HEAD"):
            allow = "PUT" if is_token_put else "GET"
            return self._reply(405, "Method Not Allowed", headers=[("Allow", allow)])
        if needs_token:
            token = self.headers.get(TOKEN_HEADER)
            # IMDSv1 is disabled: no token is refused just like a bad one.
            if not token or not sim.token_valid(token):
                return self._reply(401, "Unauthorized")
            value = sim.lookup(path[len("/latest/"):])
            if value is not None:
                return self._reply(200, value)
        return self._reply(404, "Not Found")

    def _token_put(self):
        sim = self.sim
        if self.command != "PUT":
            return self._reply(405, "Method Not Allowed", headers=[("Allow", "PUT")])
        sim.count_token_put()
        # AWS refuses forwarded token requests so a proxy or container on the
        # host cannot mint tokens on behalf of remote callers.
        if self.headers.get("X-Forwarded-For") is not None:
            return self._reply(403, "Forbidden")
        raw = (self.headers.get(TTL_HEADER) or "").strip()
        # int() alone would take "+5", "1_0" and non-ASCII digits.
        if not re.fullmatch(r"[0-9]{1,6}", raw) or not 1 <= int(raw) <= MAX_TTL:
            return self._reply(400, "Bad Request")
        ttl = int(raw)
        token = sim.issue_token(ttl)
        return self._reply(200, token, headers=[(TTL_HEADER, str(ttl))])

    # --- control API --------------------------------------------------------

    def _control(self, path):
        sim = self.sim
        routes = {
            "/_sim/state": ("GET", None),
            "/_sim/spot": ("POST", sim.set_spot),
            "/_sim/rebalance": ("POST", sim.set_rebalance),
            "/_sim/lifecycle": ("POST", sim.set_lifecycle),
            "/_sim/faults": ("POST", sim.set_faults),
            "/_sim/identity": ("POST", sim.set_identity),
            "/_sim/reset": ("POST", None),
        }
        raw = self._read_body()
        if path not in routes:
            return self._json(404, {"error": "unknown control path",
                                    "paths": sorted(routes)})
        method, setter = routes[path]
        if self.command != method:
            return self._json(405, {"error": f"use {method}"})
        if path == "/_sim/reset":
            sim.reset()
        elif setter is not None:
            try:
                body = json.loads(raw or b"{}")
            except ValueError as e:
                raise BadRequest(f"body is not JSON: {e}")
            if not isinstance(body, dict):
                raise BadRequest("body must be a JSON object")
            setter(body)
        self._json(200, sim.state())


class Server(ThreadingHTTPServer):
    # Handler threads may be asleep in a slow fault; they must not hold up exit.
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self):
        # HTTPServer's own looks its address up in DNS (socket.getfqdn) only to
        # name itself; where no resolver answers, as in the box's namespace for
        # 169.254.169.254, that waits out a 10 s timeout before the first answer.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        # A client that timed out on a slow fault has hung up by the time we
        # answer; that is the expected outcome, not worth a traceback.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            print(f"imds-sim: {client_address[0]} client went away: {exc!r}",
                  file=sys.stderr, flush=True)
            return
        super().handle_error(request, client_address)
