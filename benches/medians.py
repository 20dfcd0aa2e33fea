"""Medians over the rounds of a side-by-side run, and each server's ratio to kv_server ("kv")
in the same run: the summary benches/compare.sh and benches/tls.sh print.

Usage: python3 benches/medians.py RESULTS, where RESULTS holds "== SCENARIO, round N: NAME"
headers, each followed by a client's report (kv_load's, or a handshake count).
"""
import re, statistics, sys
runs = {}
key = None
for line in open(sys.argv[1]):
    if line.startswith("== "):
        m = re.match(r"== (\S+), round \d+: (\S+)", line)
        key = (m.group(1), m.group(2))
        runs.setdefault(key, {})
        continue
    for metric, pattern in [("server us/line", r"server cpu: ([\d.]+) us per line"),
                            ("us/handshake", r"([\d.]+) us per handshake"),
                            ("lines/s", r"lines/s (\d+)"),
                            ("p99 us", r"p99 (\d+) \|"),
                            ("max us", r"max (\d+)$"),
                            ("MB/s", r"MB/s ([\d.]+)"),
                            ("bytes/conn", r"([\d.]+) bytes per connection"),
                            ("errors", r"^errors (\d+)")]:
        m = re.search(pattern, line)
        if m and key:
            runs[key].setdefault(metric, []).append(float(m.group(1)))
print("\n== medians (ratio to kv in the same run)")
for scenario in dict.fromkeys(k[0] for k in runs):
    names = [k[1] for k in runs if k[0] == scenario]
    for metric in ["server us/line", "us/handshake", "lines/s", "p99 us", "max us", "MB/s",
                   "bytes/conn", "errors"]:
        cells = []
        base = statistics.median(runs[(scenario, "kv")].get(metric, [0])) if (scenario, "kv") in runs else 0
        for name in names:
            values = runs[(scenario, name)].get(metric)
            if not values:
                continue
            median = statistics.median(values)
            ratio = f" ({median / base:.2f}x)" if base and name != "kv" and metric != "errors" else ""
            cells.append(f"{name} {median:g}{ratio}")
        if cells:
            print(f"{scenario:17} {metric:15} " + " | ".join(cells))
