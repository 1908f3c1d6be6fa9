"""Queue benchmark: jobs drained per second by 1, 4 and 16 workers, and enqueue-to-start latency.

Two kinds of job. `noop`: the worker claims it, reads its payload in the tenant's context and
records the outcome, with no provider call: the queue's own cost. `completion`: queued by
bulkhead.complete() (admission, render, enqueue), then the worker reads the tenant's credential,
calls a FAKE OpenAI server (bench/fake-openai, a test double in Rust that answers at once, so
that the fake's own CPU stays out of the measurement) and settles the ledger with the job's
outcome: the whole path. Each worker is a `bulkhead worker` process running up to CONCURRENCY jobs at a time
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

FAKE = sys.argv[4] if len(sys.argv) > 4 else None

URL, BIN = sys.argv[1], sys.argv[2]
JOBS = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
TENANTS = [f"00000000-0000-4000-8000-{i:012x}" for i in range(1, 11)]
WORKER_URL = URL.replace("postgres@", "bulkhead_bench_worker@")
CONCURRENCY = os.environ.get("CONCURRENCY", "16")


def workers(n, poll_ms=1000, fake_port=None):
    env = dict(os.environ, DATABASE_URL=WORKER_URL)
    if fake_port:
        env.update(OPENAI_BASE_URL=f"http://127.0.0.1:{fake_port}/v1", BENCH_OPENAI_KEY="sk-bench-fake")
    return [subprocess.Popen([BIN, "worker", "--name", f"bench-{i}", "--concurrency", CONCURRENCY, "--poll-ms", str(poll_ms)],
                             env=env, stderr=subprocess.DEVNULL) for i in range(n)]


def stop(procs):
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()


def drain(db, n, queue_sql, fake_port=None):
    with db.transaction():
        for t in TENANTS:
            db.execute("select bulkhead.set_tenant(%s)", (t,))
            db.execute(queue_sql, (JOBS // len(TENANTS),))
    start = time.perf_counter()
    procs = workers(n, fake_port=fake_port)
    while db.execute("select count(*) from bulkhead.job_schedule where state not in ('done', 'dead')").fetchone()[0] > 0:
        if time.perf_counter() - start > 300:
            stop(procs)
            raise RuntimeError("jobs still pending after 300 s")
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    stop(procs)
    dead = db.execute("select count(*) from bulkhead.job_schedule where state = 'dead'").fetchone()[0]
    assert dead == 0, f"{dead} jobs died"
    return elapsed


def main():
    db = psycopg.connect(URL, autocommit=True)
    db.execute("select bulkhead.set_skeleton('bench', 'Answer briefly: {{ vars.q }}')")
    for t in TENANTS:
        db.execute("insert into bulkhead.tenants (id, slug, name, pinecone_namespace) values (%s, %s, %s, %s)",
                   (t, "q" + t[-4:], "Queue " + t[-4:], "tenant-" + t))
        db.execute("select bulkhead.publish_prompt(%s, 'bench', '{}')", (t,))
        db.execute("select bulkhead.activate_prompt(%s, 'bench', 1)", (t,))
        db.execute("select bulkhead.set_credential(%s, 'openai', 'env:BENCH_OPENAI_KEY')", (t,))
        db.execute("select bulkhead.set_budget(%s, 100000000, 2000000000, 2000000000, 1000000)", (t,))
    fake = subprocess.Popen([FAKE, "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        fake_port = int(fake.stdout.readline().strip().rsplit(":", 1)[1])
        throughput(db, fake_port)
    finally:
        fake.terminate()
    latency(db)


def throughput(db, fake_port):
    print(f"| workers (processes, {CONCURRENCY} jobs at a time each) | job | jobs | seconds | jobs/s |")
    print("|---:|---|---:|---:|---:|")
    for n in (1, 4, 16):
        elapsed = drain(db, n, "select count(bulkhead.enqueue_job('noop', jsonb_build_object('n', i))) "
                               "from generate_series(1, %s) i")
        print(f"| {n} | noop (queue only) | {JOBS} | {elapsed:.2f} | {JOBS / elapsed:.0f} |")
    for n in (1, 4, 16):
        elapsed = drain(db, n, "select count(bulkhead.complete('bench', jsonb_build_object('q', i), 'gpt-4o-mini', 16)) "
                               "from generate_series(1, %s) i", fake_port)
        print(f"| {n} | completion (fake OpenAI, ledger settle) | {JOBS} | {elapsed:.2f} | {JOBS / elapsed:.0f} |")
    ledger = db.execute("select count(*) from bulkhead.ledger").fetchone()[0]
    assert ledger == 3 * JOBS, f"{ledger} ledger rows for {3 * JOBS} completions"


def latency(db):
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
