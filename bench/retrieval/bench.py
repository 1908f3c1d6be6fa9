"""Retrieval benchmark: recall@10, share of full answers and latency by tenant size, four arms
side by side in one run (see run.sh and BENCHMARKS.md).

Data: N gaussian-clustered vectors of D dimensions in one shared table, owned by tenants that hold
0.01 %, 0.1 %, 1 % and 10 % of the rows, the rest spread over filler tenants. Each tenant draws
from its own few clusters. Queries "near" perturb one of the tenant's own vectors; queries "far"
perturb a vector of another tenant (the case where a shared index finds only other tenants' rows).

Arms (all as a bulkhead_app login, tenant context set, row level security on):
  naive      shared HNSW over every tenant's rows, RLS filters after the index scan
  iterative  the same with hnsw.iterative_scan = relaxed_order (pgvector 0.8)
  bulkhead   bulkhead.tenant_search (exact for small tenants, the tenant's own index for large)
  ideal      the tenant's rows alone in a table of their own with its own HNSW index, with
             ef_search raised until its recall matches bulkhead's
Ground truth is an exact scan of the tenant's rows.
"""

import json
import random
import statistics
import sys
import time

import psycopg

N = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
D = int(sys.argv[3]) if len(sys.argv) > 3 else 128
QUERIES = int(sys.argv[4]) if len(sys.argv) > 4 else 40  # per tenant and kind (near / far)
THRESHOLD = int(sys.argv[5]) if len(sys.argv) > 5 else 50000  # chunks from which a tenant gets its own index
K = 10
SHARES = [0.0001, 0.001, 0.01, 0.1]
FILLERS = 9
CLUSTERS = 200
random.seed(7)


def tenant_uuid(i):
    return f"00000000-0000-4000-8000-{i:012x}"


def vec_text(v):
    return "[" + ",".join(f"{x:.5f}" for x in v) + "]"


def gauss_around(center, sigma):
    return [c + random.gauss(0, sigma) for c in center]


def main():
    url = sys.argv[1]
    admin = psycopg.connect(url, autocommit=True)
    centers = [[random.gauss(0, 1) for _ in range(D)] for _ in range(CLUSTERS)]

    # Tenants 1..4: the measured sizes; 5..: fillers sharing the rest.
    sizes = {i + 1: max(1, round(N * s)) for i, s in enumerate(SHARES)}
    rest = N - sum(sizes.values())
    for f in range(FILLERS):
        sizes[5 + f] = rest // FILLERS + (1 if f < rest % FILLERS else 0)
    owned = {t: random.sample(range(CLUSTERS), 3) for t in sizes}

    print(f"generating {N} x {D} vectors for {len(sizes)} tenants ...", file=sys.stderr)
    rows = {t: [gauss_around(centers[random.choice(owned[t])], 0.35) for _ in range(n)] for t, n in sizes.items()}

    with admin.cursor() as cur:
        for t in sizes:
            cur.execute("insert into bulkhead.tenants (id, slug, name, pinecone_namespace) values (%s, %s, %s, %s)",
                        (tenant_uuid(t), f"rt-{t}", f"Tenant {t}", f"tenant-{t}"))
            cur.execute("select bulkhead.set_embedding_dims(%s, %s)", (tenant_uuid(t), D))
        cur.execute("create table bench.shared (id bigint primary key, tenant_id uuid not null, embedding vector(%s) not null)" % D)
        cur.execute("alter table bench.shared enable row level security")
        cur.execute("alter table bench.shared force row level security")
        cur.execute("create policy tenant_isolation on bench.shared using (tenant_id = (select bulkhead.current_tenant()))")
        cur.execute("grant select on bench.shared to bulkhead_bench_app")
        cur.execute("set session_replication_role = replica")  # bulk load: skip the outbox trigger
        next_id = 1
        for t, vectors in rows.items():
            cur.execute("select bulkhead.set_tenant(%s)", (tenant_uuid(t),))
            with cur.copy("copy bulkhead.documents (tenant_id, external_id) from stdin") as cp:
                cp.write_row((tenant_uuid(t), "bench"))
            cur.execute("select id from bulkhead.documents where tenant_id = %s", (tenant_uuid(t),))
            doc = cur.fetchone()[0]
            with cur.copy("copy bulkhead.chunks (tenant_id, document_id, ordinal, content, embedding) from stdin") as cp:
                for i, v in enumerate(vectors):
                    cp.write_row((tenant_uuid(t), doc, i, f"t{t} chunk {i}", vec_text(v)))
            with cur.copy("copy bench.shared (id, tenant_id, embedding) from stdin") as cp:
                for v in vectors:
                    cp.write_row((next_id, tenant_uuid(t), vec_text(v)))
                    next_id += 1
        cur.execute("set session_replication_role = origin")
        cur.execute("select bulkhead.set_tenant(null)")
        cur.execute("set maintenance_work_mem = '2GB'")
        print("building the shared HNSW index (naive and iterative arms) ...", file=sys.stderr)
        cur.execute("create index on bench.shared using hnsw (embedding vector_cosine_ops) with (m = 16, ef_construction = 64)")
        print(f"building per-tenant indexes (tenants of >= {THRESHOLD} chunks) ...", file=sys.stderr)
        for t, n in sizes.items():
            if n >= THRESHOLD:
                cur.execute("select bulkhead.build_tenant_index(%s)", (tenant_uuid(t),))
        for t in range(1, 5):
            cur.execute(f"create table bench.ideal_{t} (id bigint primary key, embedding vector({D}) not null)")
            cur.execute(f"insert into bench.ideal_{t} select id, embedding from bench.shared where tenant_id = %s",
                        (tenant_uuid(t),))
            cur.execute(f"create index on bench.ideal_{t} using hnsw (embedding vector_cosine_ops) with (m = 16, ef_construction = 64)")
            cur.execute(f"grant select on bench.ideal_{t} to bulkhead_bench_app")
        cur.execute("analyze")

    # No automatic server-side prepare: a cached plan would ignore per-arm planner settings.
    app = psycopg.connect(url.replace("postgres@", "bulkhead_bench_app@"), autocommit=True, prepare_threshold=None)
    results = []
    for t in range(1, 5):
        tid = tenant_uuid(t)
        others = [x for x in sizes if x != t]
        queries = []
        for _ in range(QUERIES):
            queries.append(("near", gauss_around(random.choice(rows[t]), 0.1)))
            queries.append(("far", gauss_around(random.choice(rows[random.choice(others)]), 0.1)))
        # Ground truth: exact, the tenant's rows only (read as superuser, no index).
        truth = {}
        with admin.cursor() as cur:
            cur.execute("set enable_indexscan = off")
            cur.execute("set enable_bitmapscan = off")
            for qi, (_, q) in enumerate(queries):
                cur.execute("select id from bench.shared where tenant_id = %s order by embedding <=> %s::vector limit %s",
                            (tid, vec_text(q), K))
                truth[qi] = [r[0] for r in cur.fetchall()]
            cur.execute("reset enable_indexscan")
            cur.execute("reset enable_bitmapscan")
        # chunk ids differ from bench.shared ids: map by (tenant, ordinal) order of load
        with admin.cursor() as cur:
            cur.execute("select id from bench.shared where tenant_id = %s order by id", (tid,))
            shared_ids = [r[0] for r in cur.fetchall()]
            cur.execute("select id from bulkhead.chunks where tenant_id = %s order by ordinal", (tid,))
            chunk_ids = [r[0] for r in cur.fetchall()]
        to_shared = dict(zip(chunk_ids, shared_ids))

        def run(arm, sql, params_of, setup=(), map_ids=None, ef=None):
            out = {"near": [], "far": []}
            with app.cursor() as cur:
                cur.execute("begin")
                cur.execute("select bulkhead.set_tenant(%s)", (tid,))
                for s in setup:
                    cur.execute(s)
                if ef is not None:
                    cur.execute(f"set local hnsw.ef_search = {ef}")
                for qi, (kind, q) in enumerate(queries):
                    start = time.perf_counter()
                    cur.execute(sql, params_of(q))
                    got = [r[0] for r in cur.fetchall()]
                    elapsed = (time.perf_counter() - start) * 1000
                    if map_ids:
                        got = [map_ids.get(i, -1) for i in got]
                    want = truth[qi]
                    recall = len(set(got) & set(want)) / len(want) if want else 1.0
                    full = len(got) >= min(K, sizes[t])
                    out[kind].append((recall, full, elapsed))
                cur.execute("commit")
            return out

        arms = {
            "naive": run("naive", "select id from bench.shared order by embedding <=> %s::vector limit 10",
                         lambda q: (vec_text(q),)),
            "iterative": run("iterative", "select id from bench.shared order by embedding <=> %s::vector limit 10",
                             lambda q: (vec_text(q),), setup=["set local hnsw.iterative_scan = relaxed_order"]),
            "bulkhead": run("bulkhead", "select chunk_id from bulkhead.tenant_search(%s::vector, 10)",
                            lambda q: (vec_text(q),), map_ids=to_shared),
        }
        bulkhead_recall = statistics.mean(r for kind in ("near", "far") for r, _, _ in arms["bulkhead"][kind])
        # The ideal arm, tuned: the smallest ef_search whose recall reaches bulkhead's, else an
        # exact scan of the tenant's own table (what reaching it then takes).
        ideal_sql = f"select id from bench.ideal_{t} order by embedding <=> %s::vector limit 10"
        for ef in (40, 80, 160, 320, 640, 1000):
            ideal = run("ideal", ideal_sql, lambda q: (vec_text(q),), ef=ef)
            ideal_recall = statistics.mean(r for kind in ("near", "far") for r, _, _ in ideal[kind])
            if ideal_recall >= bulkhead_recall - 1e-9:
                label = f"ideal (own HNSW, ef_search={ef})"
                break
        else:
            ideal = run("ideal", ideal_sql, lambda q: (vec_text(q),),
                        setup=["set local enable_indexscan = off"])
            label = "ideal (own table, exact)"
        arms[label] = ideal
        with app.cursor() as cur:
            cur.execute("begin")
            cur.execute("select bulkhead.set_tenant(%s)", (tid,))
            cur.execute("select path from bulkhead.tenant_search_path()")
            path = cur.fetchone()[0]
            cur.execute("commit")
        for arm, out in arms.items():
            for kind in ("near", "far"):
                samples = out[kind]
                lat = sorted(e for _, _, e in samples)
                results.append({
                    "tenant_share": f"{SHARES[t - 1] * 100:g} %", "rows": sizes[t], "queries": kind, "arm": arm,
                    "bulkhead_path": path.split(":")[0],
                    "recall@10": round(statistics.mean(r for r, _, _ in samples), 3),
                    "full_answers": round(sum(1 for _, f, _ in samples if f) / len(samples), 3),
                    "p50_ms": round(lat[len(lat) // 2], 2),
                    "p95_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.95))], 2),
                })
    print("| tenant | rows | queries | arm | recall@10 | full answers | p50 ms | p95 ms |")
    print("|---|---:|---|---|---:|---:|---:|---:|")
    for r in results:
        arm = r["arm"] + (f" ({r['bulkhead_path']})" if r["arm"] == "bulkhead" else "")
        print(f"| {r['tenant_share']} | {r['rows']} | {r['queries']} | {arm} | {r['recall@10']:.3f} "
              f"| {r['full_answers']:.2f} | {r['p50_ms']} | {r['p95_ms']} |")
    print(json.dumps(results), file=sys.stderr)


if __name__ == "__main__":
    main()
