"""aws_requests: the AWS requests (and their price) of a short job, an idle hour and a running minute, counted by a
proxy in front of moto.
"""

import json
import socket
import threading
import time

from common import BenchError, FINISHED, PRICES, READY, STARTED, TARGETS, say, tail


def price_class(op):
    """The price list an operation is billed on."""
    service = op.split(" ")[0]
    if service == "S3":
        verb = op.split(" ")[1]
        if verb in ("PUT", "POST", "LIST"):
            return "s3_put"
        if verb == "DELETE":
            return "s3_delete"
        return "s3_get"
    return {"SQS": "sqs", "KMS": "kms", "STS": "sts", "AutoScaling": "autoscaling"}.get(service, "sqs")


class RequestCounter:
    """An HTTP proxy on loopback in front of moto that counts each request by
    service and operation: SQS and KMS by `X-Amz-Target`, STS and Auto Scaling by
    the `Action` of their form, S3 by method (GET on a bucket with `list-type`
    is a LIST). moto closes each connection after one answer, so each
    connection carries one request."""

    def __init__(self, upstream):
        import socket
        import socketserver
        from urllib.parse import urlparse

        up = urlparse(upstream)
        self.upstream = (up.hostname, up.port or 80)
        self.lock = threading.Lock()
        self.counts = {}
        counter = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                client = self.request
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                counter.count(head)
                try:
                    server = socket.create_connection(counter.upstream)
                except OSError:
                    return
                server.sendall(head)
                relay(client, server)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self, request):
        text = request.decode("latin-1")
        line, _, rest = text.partition("\r\n")
        method, target = (line.split(" ") + ["", ""])[:2]
        headers = {}
        for h in rest.split("\r\n\r\n")[0].split("\r\n"):
            k, _, v = h.partition(":")
            headers[k.strip().lower()] = v.strip()
        body = text.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in text else ""
        amz = headers.get("x-amz-target", "")
        if amz.startswith("AmazonSQS."):
            op = "SQS " + amz.split(".", 1)[1]
        elif amz.startswith("TrentService."):
            op = "KMS " + amz.split(".", 1)[1]
        elif "Action=" in body or "Action=" in target:
            action = (body + "&" + target).split("Action=", 1)[1].split("&")[0]
            op = ("STS " if action.startswith("AssumeRole") or action == "GetCallerIdentity" else "AutoScaling ") + action
        elif method == "GET" and "list-type" in target:
            op = "S3 LIST"
        else:
            op = f"S3 {method}"
        with self.lock:
            self.counts[op] = self.counts.get(op, 0) + 1

    def reset(self):
        with self.lock:
            self.counts = {}

    def take(self):
        with self.lock:
            counts, self.counts = self.counts, {}
        return counts

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def relay(a, b):
    """Copies both ways until either side closes."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(a, selectors.EVENT_READ, b)
    sel.register(b, selectors.EVENT_READ, a)
    try:
        while True:
            for key, _ in sel.select(timeout=60):
                data = key.fileobj.recv(65536)
                if not data:
                    return
                key.data.sendall(data)
    except OSError:
        return
    finally:
        sel.close()
        b.close()


class AwsFigures:
    """aws_requests."""

    def aws_requests(self):
        """Every request the agent sends to SQS, S3, KMS and STS, counted by a
        proxy in front of moto: per short job, per minute of a running job, per
        idle hour, and what they cost at AWS's request prices."""
        counter = RequestCounter(self.endpoint)
        try:
            self._aws_requests(counter)
        finally:
            counter.close()

    def _aws_requests(self, counter):
        jobs = 20
        url, bucket = self.pool("requests")
        config = self.config(
            "requests",
            {
                "agent": "slots = 1\n",
                "aws": f'region = "{self.region}"\nendpoint_url = "{counter.url}"\n',
                "queue": f'url = "{url}"\nwait_secs = 20\nvisibility_timeout_secs = 300\n',
                "results": f'bucket = "{bucket}"\n',
            },
        )
        proc, log = self.start_agent(config, "requests")
        self.wait_log(proc, log, lambda ls: any(l.get("msg") == READY for l in ls), "the agent to be ready", 60)
        # Idle: only the long polls.
        # A whole minute: three 20 s long polls, whatever --idle-secs says (a
        # shorter window sees one or two and misstates the hour).
        idle_secs = 60
        counter.reset()
        time.sleep(idle_secs)
        idle = counter.take()
        # Short jobs, one after another: all they cost, receives included.
        ids = [f"bench-requests-{self.run_id}-{i:03d}" for i in range(jobs)]
        counter.reset()
        self.send_jobs(url, ids)
        deadline = time.monotonic() + 300
        while len(self.result_keys(bucket)) < jobs:
            if time.monotonic() > deadline:
                raise BenchError(f"aws_requests: {len(self.result_keys(bucket))}/{jobs} results after 300 s")
            time.sleep(0.2)
        self.wait_queue_empty(url, 120)
        short = counter.take()
        # A running job of 30 s printing a line a second (live log chunks).
        long_id = f"bench-requests-{self.run_id}-long"
        body = {"version": 1, "id": long_id, "image": self.image, "command": ["sh", "-c", "for i in $(seq 30); do echo line $i; sleep 1; done"]}
        self.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))
        lines = self.wait_log(proc, log, lambda ls: any(l.get("msg") == STARTED and l.get("job_id") == long_id for l in ls), "the long job to start", 120)
        counter.reset()
        started = time.monotonic()
        self.wait_log(proc, log, lambda ls: any(l.get("msg") == FINISHED and l.get("job_id") == long_id for l in ls), "the long job to finish", 120)
        running = counter.take()
        running_minutes = (time.monotonic() - started) / 60.0
        code = self.stop_agent(proc)
        if code != 0:
            raise BenchError(f"aws_requests: the agent exited {code} after SIGTERM:\n{tail(log)}")
        del lines

        self._report_requests(idle, idle_secs, short, jobs, running, running_minutes)

    def _report_requests(self, idle, idle_secs, short, jobs, running, running_minutes):
        """The requests counted while idle, for short jobs and for a running job: per
        idle hour, per job and per running minute, by operation and in dollars."""
        per_idle_hour = sum(idle.values()) * 3600.0 / idle_secs
        per_job = sum(short.values()) / jobs
        per_running_minute = sum(running.values()) / running_minutes

        def breakdown(counts, per):
            return ", ".join(f"{op} {n / per:.2f}" for op, n in sorted(counts.items(), key=lambda kv: -kv[1]))

        def dollars(counts, per):
            return sum(PRICES[price_class(op)] * n for op, n in counts.items()) / per

        per_million_jobs = dollars(short, jobs) * 1e6
        per_idle_month = dollars(idle, idle_secs / 3600.0) * 730
        say(
            f"aws_requests: {per_job:.1f} requests per short job (target <= {TARGETS['requests_per_job']}), "
            f"{per_idle_hour:.0f} per idle agent-hour (target <= {TARGETS['requests_per_idle_hour']}), "
            f"{per_running_minute:.1f} per minute of a running job"
        )
        say(f"  per short job: {breakdown(short, jobs)}")
        say(f"  per idle hour: {breakdown(idle, idle_secs / 3600.0)}")
        say(f"  per running minute: {breakdown(running, running_minutes)}")
        say(
            f"  at AWS's request prices: ${per_million_jobs:.2f} per million short jobs, "
            f"${per_idle_month:.4f} per idle agent-month (730 h)"
        )
        self.row(
            "aws_requests per job",
            f"{per_job:.1f} requests (${per_million_jobs:.2f} per million jobs)",
            "none",
            "n/a",
            f"<= {TARGETS['requests_per_job']}",
            per_job <= TARGETS["requests_per_job"],
        )
        self.row(
            "aws_requests idle",
            f"{per_idle_hour:.0f} per agent-hour (${per_idle_month:.4f} per agent-month)",
            "none",
            "n/a",
            f"<= {TARGETS['requests_per_idle_hour']}",
            per_idle_hour <= TARGETS["requests_per_idle_hour"],
        )
        self.row(
            "aws_requests running",
            f"{per_running_minute:.1f} per minute of a running job",
            "none",
            "n/a",
            "none",
            True,
        )
