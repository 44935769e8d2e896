"""What the box's log sink received (scripts/box: rsyslogd in a namespace of its
own, one line per message: app, structured data, message, tab-separated), and
the box's forwarder's own counters. Helpers for scripts/box.d/test_box.py."""

import json
import os
import re

# RFC 5424 §6.3: [ID PARAM="VALUE" ...], a value's ", \ and ] escaped.
ELEMENT = re.compile(r'\[([^ \]]+)((?: [^ =\]"]+="(?:[^"\\\]]|\\.)*")*)\]')
PARAM = re.compile(r' ([^ =\]"]+)="((?:[^"\\\]]|\\.)*)"')
SD_ID = "deckhand@32473"


def sink_log(stack_dir, box_name):
    """Where scripts/box's sink writes (its BOX_DIR/sink/received.log)."""
    box_dir = "box" if box_name == "deckhand-box" else box_name
    return os.path.join(stack_dir, box_dir, "sink", "received.log")


class Line:
    def __init__(self, text):
        self.app, sd, self.msg = (text.split("\t", 2) + ["", ""])[:3]
        self.sd = {m[1]: {k: re.sub(r"\\(.)", r"\1", v) for k, v in PARAM.findall(m[2])}
                   for m in ELEMENT.finditer(sd)}
        self.fields = self.sd.get(SD_ID, {})

    def deckhand(self):
        """deckhand's own JSON line, or None."""
        try:
            return json.loads(self.msg) if self.app == "deckhand" else None
        except ValueError:
            return None


def received(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [Line(line.rstrip("\n")) for line in f]
    except FileNotFoundError:
        return []


def counters(stats_text):
    """The latest value of every counter set in impstats' file, by name."""
    latest = {}
    for line in stats_text.splitlines():
        start = line.find("{")
        try:
            obj = json.loads(line[start:]) if start >= 0 else None
        except ValueError:
            continue
        if obj:
            latest[obj["name"]] = obj
    return latest


def with_forwarder(config_text, endpoint, token_secret):
    """cloud-config.yaml's commented [log_forwarder] block, on: kind rfc5424,
    `endpoint`, the token from `token_secret`, no CA (the box's sink is plain TCP)."""
    values = {"kind": '"rfc5424"', "endpoint": f'"{endpoint}"', "token_secret": f'"{token_secret}"'}
    out, seen = [], set()
    for line in config_text.split("\n"):
        m = re.match(r"^(\s+)# \[log_forwarder\]\s*$", line)
        if m:
            out.append(f"{m[1]}[log_forwarder]")
            seen.add("section")
            continue
        m = re.match(r"^(\s+)# (\w+) = .*# PARAM", line)
        if m and "section" in seen:
            if m[2] in values:
                out.append(f"{m[1]}{m[2]} = {values[m[2]]}")
                seen.add(m[2])
            continue
        out.append(line)
    assert seen >= {"section", *values}, f"cloud-config.yaml's [log_forwarder] block lacks {values.keys() - seen}"
    return "\n".join(out)
