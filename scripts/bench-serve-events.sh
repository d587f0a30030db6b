#!/usr/bin/env bash
# kitt serve's event fan-out: CLIENTS streams of one run (`/api/v1/events?run=…`), a record
# appended to its journal EVENTS times at RATE per second; prints the append → receipt latency
# over all clients (p50/p99/max), the server's CPU while the events flow, and its RSS before the
# streams, with them open and idle, and after the events.
#   scripts/bench-serve-events.sh [KITT] [CLIENTS] [EVENTS] [RATE]   (default: target/release/kitt, 100, 50, 10)
set -euo pipefail
KITT=$(realpath "${1:-target/release/kitt}")
CLIENTS=${2:-100}
EVENTS=${3:-50}
RATE=${4:-10}
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/runs/r1"
echo '{"id":"r1","identity":"x","suite":"x","file":"/x","created_unix_ns":1}' >"$work/runs/r1/run.json"
: >"$work/runs/r1/journal.jsonl"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
KITT_TOKENS="$work/cfg/tokens.json" KITT_STORE=off "$KITT" serve --bind "127.0.0.1:$port" --runs-dir "$work/runs" \
  2>"$work/serve.log" &
pid=$!
until curl -sf "http://127.0.0.1:$port/api/v1/health" >/dev/null; do sleep 0.01; done
python3 - "$port" "$(cat "$work/cfg/web-token")" "$work/runs/r1/journal.jsonl" "$pid" "$CLIENTS" "$EVENTS" "$RATE" <<'PY'
import socket, sys, threading, time, json, os
port, token, journal, pid, clients, events, rate = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
tick = os.sysconf("SC_CLK_TCK")
def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"):
            return int(l.split()[1]) / 1024
sent = {}
got = [[] for _ in range(clients)]
def client(i, ready):
    s = socket.create_connection(("127.0.0.1", int(port)))
    s.sendall(f"GET /api/v1/events?run=r1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    f = s.makefile("rb")
    while f.readline() not in (b"\r\n", b""):
        pass
    ready.release()
    while len(got[i]) < events:
        line = f.readline()
        if not line:
            return
        if line.startswith(b"data: "):
            seq = json.loads(line[6:])["seq"]
            got[i].append((seq, time.monotonic()))
rss0 = rss()
ready = threading.Semaphore(0)
threads = [threading.Thread(target=client, args=(i, ready), daemon=True) for i in range(clients)]
for t in threads: t.start()
for _ in threads: ready.acquire()
time.sleep(2)
rss1 = rss()
c0, w0 = cpu(), time.monotonic()
with open(journal, "a") as j:
    for seq in range(events):
        j.write(json.dumps({"seq": seq, "unix_ns": time.time_ns(), "event": "run_stopped", "reason": "bench"}) + "\n")
        j.flush()
        sent[seq] = time.monotonic()
        time.sleep(1 / rate)
for t in threads: t.join(timeout=10)
c1, w1 = cpu(), time.monotonic()
lat = sorted((r - sent[seq]) * 1000 for g in got for seq, r in g)
n = len(lat)
print(f"{clients} clients, {events} events at {rate:g}/s: {n} of {clients * events} received")
print(f"append -> receipt: p50 {lat[n // 2]:.1f} ms, p99 {lat[int(n * 0.99)]:.1f} ms, max {lat[-1]:.1f} ms")
print(f"server CPU while the events flowed: {100 * (c1 - c0) / (w1 - w0):.1f} % of one core")
print(f"server RSS: {rss0:.1f} MB before the streams, {rss1:.1f} MB with {clients} idle streams, {rss():.1f} MB after")
PY
