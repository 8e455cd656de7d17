#!/usr/bin/env python3
"""Per-layer-type totals from `moka time` / `caffe time` logs:

  layer_summary.py PROTOTXT LABEL=LOG [LABEL=LOG ...]

Reads the "<name>\tforward: X ms." / "<name>\tbackward: X ms." lines (Caffe's
format, which moka time shares), maps each layer name to its type from
PROTOTXT (names ending in _split are the Split layers both engines insert),
and prints ms per pass by type, forward and backward, one column per log.
"""
import re
import sys


def layer_types(path):
    text = open(path).read()
    types = {}
    for block in re.findall(r"layer\s*\{(.*?)\n\}", text, flags=re.S):
        n = re.search(r'\bname:\s*"([^"]*)"', block)
        t = re.search(r'\btype:\s*"([^"]*)"', block)
        if n and t:
            types[n.group(1)] = t.group(1)
    return types


def read_log(path, types):
    sums = {}
    pat = re.compile(r"\]\s*(\S+)\s+(forward|backward): ([0-9.eE+-]+) ms\.$")
    for line in open(path, errors="replace"):
        if "*** Benchmark begins ***" in line:
            sums = {}  # a log may hold several tries (tests/bench/lib.sh): keep the last
        m = pat.search(line.rstrip("\n"))
        if not m:
            continue
        name, kind, ms = m.group(1), m.group(2), float(m.group(3))
        t = "Split" if name.endswith("_split") else types.get(name, "Input/other")
        sums[(t, kind)] = sums.get((t, kind), 0.0) + ms
    return sums


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    types = layer_types(sys.argv[1])
    cols = []
    for arg in sys.argv[2:]:
        label, path = arg.split("=", 1)
        cols.append((label, read_log(path, types)))
    for kind in ("forward", "backward"):
        keys = sorted({t for _, s in cols for (t, k) in s if k == kind},
                      key=lambda t: -max(s.get((t, kind), 0.0) for _, s in cols))
        if not keys or all(sum(v for (t, k), v in s.items() if k == kind) == 0 for _, s in cols):
            continue
        print("  %-8s ms per pass, by layer type:" % kind)
        print("    %-16s" % "type" + "".join("%22s" % l for l, _ in cols))
        for t in keys:
            row = "    %-16s" % t
            for _, s in cols:
                tot = sum(v for (tt, k), v in s.items() if k == kind) or 1.0
                v = s.get((t, kind), 0.0)
                row += "%14.1f (%4.1f%%)" % (v, 100.0 * v / tot)
            print(row)
        row = "    %-16s" % "total"
        for _, s in cols:
            row += "%14.1f        " % sum(v for (t, k), v in s.items() if k == kind)
        print(row)


if __name__ == "__main__":
    main()
