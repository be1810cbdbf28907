#!/usr/bin/env python3
"""Parses `iscsi-test-cu -v` logs into per-test results and writes a comparison report.

Usage: compliance_report.py OUT.md KNOWN_FAILURES.txt CONFIG=DIR [CONFIG=DIR ...]
Each DIR holds FAMILY.log files from one target configuration. A test counts as skipped when it
passed but printed "[SKIPPED]" (libiscsi's way of saying the feature was not exercised).
Exit status 1 when the first configuration (ours) has a failure not listed in KNOWN_FAILURES
or passes fewer tests than any other configuration (the baseline) in the same family set.
"""
import os
import re
import sys

TEST_RE = re.compile(r"^  Test: (\S+) \.\.\.(.*)$")
SUITE_RE = re.compile(r"^Suite: (\S+)")


def parse(path, family):
    results = {}  # name -> (status, reason)
    suite = None
    name = None
    text = []
    with open(path, errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            m = SUITE_RE.match(line)
            if m and name is None:
                suite = m.group(1)
                continue
            m = TEST_RE.match(line)
            if m:
                name = f"{family}.{suite}.{m.group(1)}"
                text = [m.group(2)]
                line = m.group(2)
            elif name is None:
                continue
            else:
                text.append(line)
            # CUnit prints the verdict at the start of a line (or right after "Test: X ..."),
            # sometimes followed by the next test's teardown output.
            verdict = "passed" if line.startswith("passed") else "FAILED" if line.startswith("FAILED") else None
            if verdict:
                joined = "\n".join(text)
                if verdict == "FAILED":
                    reasons = [t.strip() for t in text if "[FAILED]" in t or "FAILED" in t]
                    results[name] = ("failed", reasons[0] if reasons else "")
                elif "[SKIPPED]" in joined:
                    reason = next((t.strip() for t in text if "[SKIPPED]" in t), "")
                    results[name] = ("skipped", reason)
                else:
                    results[name] = ("passed", "")
                name = None
    return results


def main():
    out, known_path = sys.argv[1], sys.argv[2]
    configs = [a.split("=", 1) for a in sys.argv[3:]]
    known = set()
    if os.path.exists(known_path):
        for line in open(known_path):
            line = line.split("#", 1)[0].strip()
            if line:
                known.add(line)
    all_results = {}
    families = []
    for label, d in configs:
        res = {}
        for fn in sorted(os.listdir(d)):
            if fn.endswith(".log"):
                fam = fn[:-4]
                if fam not in families:
                    families.append(fam)
                res.update(parse(os.path.join(d, fn), fam))
        all_results[label] = res

    lines = ["# iscsi-test-cu compliance", ""]
    header = "| family | " + " | ".join(f"{l} pass / fail / skip" for l, _ in configs) + " |"
    lines += [header, "|---" * (len(configs) + 1) + "|"]
    totals = {l: [0, 0, 0] for l, _ in configs}
    for fam in families:
        row = [fam]
        for label, _ in configs:
            r = [v[0] for k, v in all_results[label].items() if k.startswith(fam + ".")]
            c = [r.count("passed"), r.count("failed"), r.count("skipped")]
            for i in range(3):
                totals[label][i] += c[i]
            row.append(f"{c[0]} / {c[1]} / {c[2]}")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("| **all** | " + " | ".join(f"{t[0]} / {t[1]} / {t[2]}" for t in totals.values()) + " |")
    lines.append("")
    for label, _ in configs:
        res = all_results[label]
        bad = sorted(k for k, v in res.items() if v[0] == "failed")
        skipped = sorted(k for k, v in res.items() if v[0] == "skipped")
        lines.append(f"## {label}: {len(bad)} failed, {len(skipped)} skipped")
        for k in bad:
            lines.append(f"- FAILED {k}: {res[k][1]}")
        for k in skipped:
            lines.append(f"- skipped {k}: {res[k][1]}")
        lines.append("")
    report = "\n".join(lines)
    with open(out, "w") as f:
        f.write(report + "\n")
    print(report)

    ours_label = configs[0][0]
    ours = all_results[ours_label]
    status = 0
    unexpected = sorted(k for k, v in ours.items() if v[0] == "failed" and k not in known)
    if unexpected:
        print(f"{ours_label}: unexpected failures: {', '.join(unexpected)}")
        status = 1
    if not ours:
        print(f"{ours_label}: no test results parsed")
        status = 1
    for label, _ in configs[1:]:
        if label.startswith("ferry"):
            bad = sorted(k for k, v in all_results[label].items() if v[0] == "failed" and k not in known)
            if bad:
                print(f"{label}: unexpected failures: {', '.join(bad)}")
                status = 1
            continue
        if totals[ours_label][0] < totals[label][0]:
            print(f"{ours_label} passes fewer tests ({totals[ours_label][0]}) than {label} ({totals[label][0]})")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
