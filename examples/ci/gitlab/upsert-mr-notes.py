#!/usr/bin/env python3
"""Post or update the merge-request notes of one environment's reconcile plan.

usage: upsert-mr-notes.py ENVIRONMENT PLAN.md

The Markdown is split on `<!-- reconcile:part-break -->` (reconcile splits plans
that would not fit one note); part i is the note that starts with the marker
`<!-- reconcile:comment env=ENVIRONMENT part=i -->`, edited in place on the next
run; parts the plan no longer has are deleted. Uses only the standard library and
GitLab's predefined CI variables plus RECONCILE_NOTES_TOKEN.
"""
import json
import os
import re
import sys
import urllib.request

BREAK = "<!-- reconcile:part-break -->"


def api(method, path, body=None):
    url = f"{os.environ['CI_API_V4_URL']}/projects/{os.environ['CI_PROJECT_ID']}{path}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("PRIVATE-TOKEN", os.environ["RECONCILE_NOTES_TOKEN"])
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req) as resp:
        text = resp.read()
        return json.loads(text) if text else None


def main():
    env, plan_file = sys.argv[1], sys.argv[2]
    with open(plan_file, encoding="utf-8") as f:
        parts = [p.strip() for p in f.read().split(BREAK)]
    mr = f"/merge_requests/{os.environ['CI_MERGE_REQUEST_IID']}/notes"
    notes, page = [], 1
    while True:
        batch = api("GET", f"{mr}?per_page=100&page={page}")
        notes += batch
        if len(batch) < 100:
            break
        page += 1
    pattern = re.compile(r"^<!-- reconcile:comment env=(\S+) part=(\d+) -->")
    ours = {}
    for n in notes:
        m = pattern.match(n.get("body") or "")
        if m and m.group(1) == env:
            ours[int(m.group(2))] = n["id"]
    for i, part in enumerate(parts):
        body = f"<!-- reconcile:comment env={env} part={i} -->\n### reconcile: `{env}`\n\n{part}"
        if i in ours:
            api("PUT", f"{mr}/{ours[i]}", {"body": body})
        else:
            api("POST", mr, {"body": body})
    for i, note_id in ours.items():
        if i >= len(parts):
            api("DELETE", f"{mr}/{note_id}")


if __name__ == "__main__":
    main()
