"""Overspend under concurrency: 64 clients race to spend a budget of exactly K calls.

Both designs see the same workload: check, a simulated provider call of LATENCY seconds, then
charge the call's actual cost. Bulkhead reserves at the check and settles after the call
(budget_check / ledger_record); the seed's Redis design checks the dollar counter, and increments
it after the call (check-then-charge). Prints one JSON line per design.
"""
import json
import os
import sys
import threading
import time
import uuid

import psycopg
import redis

CLIENTS = int(os.environ.get("CLIENTS", "64"))
K = int(os.environ.get("K", "500"))
LATENCY = float(os.environ.get("LATENCY", "0.02"))
COST = 0.0002  # 100 input + 100 output tokens at $1 per million each
CAP = K * COST


def bulkhead(url, role, design):
    admin = psycopg.connect(url, autocommit=True)
    tenant = uuid.uuid4()
    admin.execute(
        "insert into bulkhead.tenants (id, slug, name, pinecone_namespace) values (%s, %s, 'overspend', %s)",
        (tenant, f"overspend-{tenant.hex[:12]}", f"tenant-{tenant}"),
    )
    admin.execute(
        "insert into bulkhead.budgets (tenant_id, rpm, itpm, otpm, dollar_limit, period) "
        "values (%s, 2000000000, 2000000000, 2000000000, %s, 'month')",
        (tenant, CAP),
    )
    admitted = []

    def client(n):
        conn = psycopg.connect(url.replace("postgres@", role + "@"))
        count = 0
        while True:
            try:
                with conn.transaction():
                    conn.execute("select bulkhead.set_tenant(%s)", (tenant,))
                    reservation = conn.execute(
                        "select bulkhead.budget_check('bench-model', 100, 100)").fetchone()[0]
            except psycopg.Error as refusal:
                if refusal.sqlstate != "PT429":
                    raise
                break
            time.sleep(LATENCY)
            with conn.transaction():
                conn.execute("select bulkhead.set_tenant(%s)", (tenant,))
                conn.execute(
                    "select bulkhead.ledger_record(%s, '{\"prompt_tokens\": 100, \"completion_tokens\": 100}', %s)",
                    (reservation, f"req-{n}-{count}"))
            count += 1
        admitted.append(count)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    spent = float(admin.execute("select coalesce(sum(cost_usd), 0) from bulkhead.ledger where tenant_id = %s",
                                (tenant,)).fetchone()[0])
    return {"design": design, "clients": CLIENTS, "budget_calls": K,
            "admitted": sum(admitted), "cap_usd": round(CAP, 6), "spent_usd": round(spent, 6),
            "overspend_usd": round(max(spent - CAP, 0), 6)}


def redis_check_then_charge(port, script):
    r = redis.Redis(port=port)
    sha = r.script_load(script)
    key = f"bench:{uuid.uuid4().hex}"
    admitted = []

    def client(n):
        conn = redis.Redis(port=port)
        count = 0
        while True:
            ok, _ = conn.evalsha(sha, 2, key + ":bucket", key + ":spent",
                                 2000000000, 2000000000, 2000000000, 100, 100, COST, CAP)
            if not ok:
                break
            time.sleep(LATENCY)
            conn.incrbyfloat(key + ":spent", COST)
            count += 1
        admitted.append(count)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    spent = float(r.get(key + ":spent"))
    return {"design": "redis lua check-then-charge", "clients": CLIENTS, "budget_calls": K,
            "admitted": sum(admitted), "cap_usd": round(CAP, 6), "spent_usd": round(spent, 6),
            "overspend_usd": round(max(spent - CAP, 0), 6)}


if __name__ == "__main__":
    url, redis_port, script_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    print(json.dumps(bulkhead(url, "bulkhead_bench_app", "bulkhead reserve-then-settle, table path")))
    print(json.dumps(bulkhead(url, "bulkhead_bench_memory_app", "bulkhead reserve-then-settle, in memory")))
    print(json.dumps(redis_check_then_charge(redis_port, open(script_path).read())))
