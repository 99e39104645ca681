#!/usr/bin/env bash
# Start or stop a private Virtuoso Open Source instance for ESI-KG's tests and for trying
# ESI_STORE=sparql on one machine:
#
#   scripts/virtuoso.sh start DIR HTTP_PORT [ISQL_PORT]   # data, virtuoso.ini and log in DIR
#   scripts/virtuoso.sh stop DIR
#
# Both ports are bound to 127.0.0.1 only. The script writes DIR/virtuoso.ini (its own data
# files, limits, no directories readable by SQL beyond DIR), starts virtuoso-t, waits until
# the SPARQL endpoint answers, and grants SPARQL update rights to the anonymous "SPARQL" user
# (safe only because nothing but loopback can reach it; a shared deployment uses the
# /sparql-auth endpoint with a user of its own, see README "Deployment").
set -euo pipefail

usage() { echo "usage: $0 start DIR HTTP_PORT [ISQL_PORT] | stop DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
action=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)

isql_cmd() {  # isql_cmd PORT SQL...: run statements as dba, failing on the first error
    isql-vt "127.0.0.1:$1" dba dba "VERBOSE=OFF" "ERRORS=STDOUT" "BANNER=OFF" "PROMPT=OFF" \
        "EXEC=$2" </dev/null
}

case "$action" in
start)
    [ $# -ge 3 ] || usage
    http_port=$3
    isql_port=${4:-$((http_port + 1))}
    command -v virtuoso-t >/dev/null || { echo "virtuoso-t not found: apt-get install virtuoso-opensource" >&2; exit 1; }
    # The limits ESI-KG maps its own onto: a query may run MaxQueryExecutionTime seconds at
    # most (ESI-KG asks for less per request with the protocol's timeout parameter), and a
    # result may hold ResultSetMaxRows rows; ESI-KG reads one row past its own cap, so this
    # must stay above ESI_QUERY_MAX_ROWS or a truncated result would look whole.
    cat >"$dir/virtuoso.ini" <<INI
[Database]
DatabaseFile    = $dir/virtuoso.db
ErrorLogFile    = $dir/virtuoso.log
LockFile        = $dir/virtuoso.lck
TransactionFile = $dir/virtuoso.trx
xa_persistent_file = $dir/virtuoso.pxa
ErrorLogLevel   = 7
FileExtend      = 200
Striping        = 0
TempStorage     = TempDatabase

[TempDatabase]
DatabaseFile    = $dir/virtuoso-temp.db
TransactionFile = $dir/virtuoso-temp.trx
Striping        = 0

[Parameters]
ServerPort            = 127.0.0.1:$isql_port
DisableUnixSocket     = 1
MaxClientConnections  = 20
CheckpointInterval    = 60
CaseMode              = 2
DirsAllowed           = $dir
AllowOSCalls          = 0
NumberOfBuffers       = 20000
MaxDirtyBuffers       = 15000
MaxQueryMem           = 500M
ThreadsPerQuery       = 2

[HTTPServer]
ServerPort            = 127.0.0.1:$http_port
ServerRoot            = $dir
ServerThreads         = 20
MaxClientConnections  = 20
MaxKeepAlives         = 20
KeepAliveTimeout      = 10
EnabledDavVSP         = 0
HTTPProxyEnabled      = 0
Charset               = UTF-8

[SPARQL]
ResultSetMaxRows           = 1000000
MaxQueryExecutionTime      = 60
MaxQueryCostEstimationTime = 0
MaxSortedTopRows           = 1000000
DefaultGraph               =
INI
    # +wait: return once the server accepts connections (or has failed to start)
    (cd "$dir" && virtuoso-t +configfile "$dir/virtuoso.ini" +wait) >"$dir/start.log" 2>&1 || {
        cat "$dir/start.log" "$dir/virtuoso.log" >&2 2>/dev/null; exit 1; }
    for _ in $(seq 1 120); do  # bounded: 60 s
        if python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
            "http://127.0.0.1:$http_port/sparql?query=ASK%7B%7D" 2>/dev/null; then
            break
        fi
        sleep 0.5
    done
    # (a data directory used before has the grant already: Virtuoso says so, which is fine)
    isql_cmd "$isql_port" "GRANT SPARQL_UPDATE TO \"SPARQL\";" >"$dir/grant.log" || true
    if grep -q '\*\*\* Error' "$dir/grant.log" && ! grep -q 'already have role' "$dir/grant.log"; then
        cat "$dir/grant.log" >&2; exit 1
    fi
    echo "$http_port $isql_port" >"$dir/ports"
    echo "virtuoso: http://127.0.0.1:$http_port/sparql (isql 127.0.0.1:$isql_port, data $dir)"
    ;;
stop)
    [ -f "$dir/ports" ] || { echo "virtuoso: nothing started in $dir" >&2; exit 0; }
    read -r _ isql_port <"$dir/ports"
    isql_cmd "$isql_port" "shutdown;" >/dev/null 2>&1 || true
    for _ in $(seq 1 60); do  # bounded: 30 s, then the process is killed
        [ -f "$dir/virtuoso.lck" ] || break
        sleep 0.5
    done
    if [ -f "$dir/virtuoso.lck" ]; then
        pid=$(grep -o '[0-9]*' "$dir/virtuoso.lck" | head -1 || true)
        [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
        rm -f "$dir/virtuoso.lck"
    fi
    rm -f "$dir/ports"
    ;;
*) usage ;;
esac
