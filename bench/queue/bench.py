"""Queue benchmark: jobs drained per second by 1, 4 and 16 workers, and enqueue-to-start latency.

Jobs are `noop`: the worker does everything a real job does (claim, read the payload in the
tenant's context, record the outcome) except the provider call, which is the zero-latency fake
provider. Each worker is a `bulkhead worker` process running up to CONCURRENCY jobs at a time
(default 16, the worker's default). Throughput: JOBS jobs queued over 10 tenants, then N workers started; the time until the
last is done. Latency: 4 idle workers, jobs queued one by one (about 100 a second), then
claimed_at - created_at per job.
"""

import os
import statistics
import subprocess
import sys
import time

import psycopg

URL, BIN = sys.argv[1], sys.argv[2]
JOBS = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
TENANTS = [f"00000000-0000-4000-8000-{i:012x}" for i in range(1, 11)]
WORKER_URL = URL.replace("postgres@", "bulkhead_bench_worker@")
CONCURRENCY = os.environ.get("CONCURRENCY", "16")


def workers(n, poll_ms=1000):
    env = dict(os.environ, DATABASE_URL=WORKER_URL)
    return [subprocess.Popen([BIN, "worker", "--name", f"bench-{i}", "--concurrency", CONCURRENCY, "--poll-ms", str(poll_ms)],
                             env=env, stderr=subprocess.DEVNULL) for i in range(n)]


def stop(procs):
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()


def main():
    db = psycopg.connect(URL, autocommit=True)
    for t in TENANTS:
        db.execute("insert into bulkhead.tenants (id, slug, name, pinecone_namespace) values (%s, %s, %s, %s)",
                   (t, "q" + t[-4:], "Queue " + t[-4:], "tenant-" + t))
    print(f"| workers (processes, {CONCURRENCY} jobs at a time each) | jobs | seconds | jobs/s |")
    print("|---:|---:|---:|---:|")
    for n in (1, 4, 16):
        with db.transaction():
            for t in TENANTS:
                db.execute("select bulkhead.set_tenant(%s)", (t,))
                db.execute("select count(bulkhead.enqueue_job('noop', jsonb_build_object('n', i))) "
                           "from generate_series(1, %s) i", (JOBS // len(TENANTS),))
        start = time.perf_counter()
        procs = workers(n)
        while db.execute("select count(*) from bulkhead.job_schedule where state <> 'done'").fetchone()[0] > 0:
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
        stop(procs)
        print(f"| {n} | {JOBS} | {elapsed:.2f} | {JOBS / elapsed:.0f} |")

    procs = workers(4)
    time.sleep(1.0)
    ids = []
    for i in range(500):
        with db.transaction():
            db.execute("select bulkhead.set_tenant(%s)", (TENANTS[i % len(TENANTS)],))
            ids.append(db.execute("select bulkhead.enqueue_job('noop', '{\"latency\": true}')").fetchone()[0])
        time.sleep(0.01)
    while db.execute("select count(*) from bulkhead.job_schedule where claimed_at is null").fetchone()[0] > 0:
        time.sleep(0.05)
    stop(procs)
    lat = sorted(r[0] for r in db.execute(
        "select extract(epoch from s.claimed_at - j.created_at) * 1000 from bulkhead.jobs j "
        "join bulkhead.job_schedule s on s.job_id = j.id where j.id = any(%s)", (ids,)).fetchall())
    print()
    print("| enqueue-to-start (4 idle workers, 500 jobs, ~100/s) | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|")
    print(f"| LISTEN/NOTIFY, poll fallback 1 s | {statistics.median(lat):.2f} | {lat[int(len(lat) * 0.99)]:.2f} | {lat[-1]:.2f} |")


if __name__ == "__main__":
    main()
