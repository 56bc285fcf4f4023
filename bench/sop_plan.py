"""Benchmark: planning one day of SOP posts for N groups and 20 templates.

    python bench/sop_plan.py [--groups 10000,30000,100000] [--templates 20]

Each size runs in a fresh process so its peak memory (max RSS) is its own. The data is a
realistic mix: 600 bots, 5,000 stores in 12 cities, group tags and layers; templates target all
groups, cities, stores, tags or layers, on weekdays, weekends or every day, with one to three
steps across mass_send and owner_task. Prints figures; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DAY = dt.date(2026, 11, 24)  # a Tuesday
GOAL_SECONDS = 5.0
GOAL_BYTES = 1 << 30
CITIES = ["上海", "北京", "深圳", "广州", "杭州", "南京", "成都", "武汉", "西安", "苏州", "天津", "重庆"]


def make_templates(n: int):
    from scrm.sop.template import SopTemplate

    targets = [{}, {"cities": ["上海", "北京"]}, {"group_tags": ["office"]}, {"layers": ["vip", "active"]},
               {"stores": [f"S{i:05d}" for i in range(0, 5000, 7)]}, {"exclude_stores": ["S00001"]}]
    days = [{}, {"weekdays": ["mon", "tue", "wed", "thu", "fri"]}, {"weekdays": ["sat", "sun"]},
            {"from": "2026-11-01", "until": "2026-12-31"}]
    out = []
    for i in range(n):
        steps = [{"at": f"{8 + (i * 3 + k * 5) % 13:02d}:{(i * 7) % 60:02d}",
                  "channel": "mass_send" if (i + k) % 3 == 0 else "owner_task",
                  "text": "{{ store.name }} 今日福利"} for k in range(1 + i % 3)]
        # Steps of one template must differ in time.
        seen, unique = set(), []
        for s in steps:
            if s["at"] not in seen:
                seen.add(s["at"])
                unique.append(s)
        out.append(SopTemplate.model_validate({
            "id": f"tpl{i:02d}", "name": f"模板{i}", "priority": (i * 37) % 101,
            "targets": targets[i % len(targets)], "days": days[i % len(days)], "steps": unique,
        }))
    return out


def make_groups(n: int):
    from scrm.sop.planner import GroupInfo

    layers = ["vip", "active", "dormant", None]
    return [
        GroupInfo(
            chat_id=f"wr{i:08d}", owner=f"bot{i % 600:03d}", store_code=f"S{i % 5000:05d}",
            city=CITIES[(i % 5000) % len(CITIES)], tags=frozenset({"office"} if i % 4 == 0 else ()),
            layer=layers[i % 4],
        )
        for i in range(n)
    ]


def run_one(groups_n: int, templates_n: int) -> dict:
    from scrm.sop.planner import GroupIndex, Limits, plan_day

    templates = make_templates(templates_n)
    groups = make_groups(groups_n)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    index = GroupIndex(groups)
    plan = plan_day(DAY, templates, index, Limits())
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    per_group: dict[str, int] = {}
    for p in plan.posts:
        per_group[p.chat_id] = per_group.get(p.chat_id, 0) + 1
    return {
        "groups": groups_n, "templates": templates_n, "seconds": elapsed, "peak_rss": peak,
        "rss_before": rss_before, "posts": len(plan.posts), "dropped": sum(plan.dropped_counts.values()),
        "max_per_group": max(per_group.values(), default=0),
        "max_groups_per_bot": max(plan.groups_per_bot.values(), default=0),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", default="10000,30000,100000", help="comma-separated group counts")
    ap.add_argument("--templates", type=int, default=20)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(args.child, args.templates)))
        return 0

    sizes = [int(x) for x in args.groups.split(",")]
    print(f"scrm SOP planner benchmark: one day ({DAY}, a Tuesday), {args.templates} templates, "
          f"{os.cpu_count()} cores")
    print(f"  {'groups':>8} {'seconds':>8} {'peak RSS':>9} {'posts':>8} {'dropped':>9} {'max/grp':>7} "
          f"{'max grp/bot':>11}")
    results = []
    for n in sizes:
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--templates", str(args.templates)],
                             check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"  {r['groups']:>8,} {r['seconds']:>8.2f} {r['peak_rss'] / 2**20:>7.0f}MB {r['posts']:>8,} "
              f"{r['dropped']:>9,} {r['max_per_group']:>7} {r['max_groups_per_bot']:>11}")
    if len(results) >= 2:
        a, b = results[0], results[-1]
        print(f"  growth {a['groups']:,} -> {b['groups']:,} groups ({b['groups'] / a['groups']:.0f}x): "
              f"time x{b['seconds'] / a['seconds']:.1f}, peak RSS x{b['peak_rss'] / a['peak_rss']:.1f}")
    big = results[-1]
    print(f"  goal: {big['groups']:,} groups in <= {GOAL_SECONDS:.0f} s: "
          f"{'MET' if big['seconds'] <= GOAL_SECONDS else 'NOT MET'} ({big['seconds']:.2f} s)")
    print(f"  goal: peak memory <= 1 GB: {'MET' if big['peak_rss'] <= GOAL_BYTES else 'NOT MET'} "
          f"({big['peak_rss'] / 2**20:.0f} MB peak RSS of the whole process, data included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
