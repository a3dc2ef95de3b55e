#!/usr/bin/env python3
"""Turns egress-bench's printed rows into the Markdown table of the README's "Performance"
section: one line per row that has a ratio, grouped by section, with the value and the ratio
exactly as printed. Reads the bench's stdout on stdin.

usage: target/release/egress-bench [args] | tee bench.txt; python3 bench/perf_table.py < bench.txt"""
import re, sys

ROW = re.compile(r"^  (?P<label>[^:]+):\s+(?P<value>[\d.]+ [^ ]+)(?:\s+p50\s+(?P<p50>[\d.]+ \S+))?.*?\((?P<ratio>[^)]*)\)\s*$")
section = None
header = None
out = []
for line in sys.stdin:
    line = line.rstrip("\n")
    if line.startswith("egress-bench:"):
        header = line
        continue
    if line and not line.startswith(" ") and not line.startswith("bench") and not line.startswith("ratios") and not line.startswith("upstream "):
        section = ",".join(line.split(":")[0].split(",")[:2])
        continue
    m = ROW.match(line)
    if not m or section is None:
        continue
    out.append((section, m["label"].strip(), m["value"], m["p50"] or "", m["ratio"]))
if header:
    print(f"<!-- {header} -->")
print("| section | row | value | p50 | ratio |")
print("| --- | --- | --- | --- | --- |")
for sec, label, value, p50, ratio in out:
    print(f"| {sec} | {label} | {value} | {p50} | {ratio} |")
