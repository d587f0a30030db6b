#!/usr/bin/env python3
"""Agent numbers for the README: `scripts/bench-agents.py KITT [AGENTS] [SECONDS]`.

1. A 12-cell sim run on one real agent (heartbeat 10 s): its wall time vs the same suite with
   `--executor processes` (one worker), per unit; the handover on the agent (one unit's end to
   the next one's claim). Then 10 one-cell runs with the agent idle: unit queued -> claimed.
2. One idle agent for SECONDS (default 30): its CPU share and RSS.
3. AGENTS (default 500) registered agents beating once a second for SECONDS: heartbeat latency
   p50/p99 at the client, and the server's CPU share.
"""
import http.client, json, os, statistics, subprocess, sys, tempfile, threading, time

KITT = os.path.abspath(sys.argv[1])
N_AGENTS = int(sys.argv[2]) if len(sys.argv) > 2 else 500
SECONDS = int(sys.argv[3]) if len(sys.argv) > 3 else 30
TICK = os.sysconf("SC_CLK_TCK")

SUITE = """apiVersion: kitt/v1
kind: Suite
metadata: {name: bench-agents}
spec:
  models: [{name: bench-agents-model}]
  engines: [{name: sim, template: sim, params: {ttft_ms: 2, itl_ms: 1, tokens_per_chunk: 4}}]
  benchmarks:
    - {name: t, template: throughput, params: {concurrency: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], requests: 8, input_tokens: 16, max_tokens: 16}}
  warmup: {requests: 0}
  execution: {executor: agents, granularity: cell, isolation: engine, agents: {lease: 45s}}
"""


def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main():
    d = tempfile.mkdtemp(prefix="kitt-bench-agents-")
    env = dict(os.environ, KITT_RUNS_DIR=f"{d}/runs", KITT_STORE="off", KITT_TOKENS=f"{d}/tokens.json",
               KITT_HOST_LOCK=f"{d}/host.lock", HOME=d)
    os.makedirs(f"{d}/suites")
    open(f"{d}/suites/s.yaml", "w").write(SUITE)
    serve = subprocess.Popen([KITT, "serve", "--bind", "127.0.0.1:0", "--suites-dir", f"{d}/suites",
                              "--token-file", f"{d}/admin.tok"], env=env, stderr=subprocess.PIPE, text=True)
    port = None
    for line in serve.stderr:
        if "listening on" in line:
            port = int(line.rsplit(":", 1)[1])
            break
    threading.Thread(target=lambda: [None for _ in serve.stderr], daemon=True).start()
    while not os.path.exists(f"{d}/admin.tok"):
        time.sleep(0.02)
    admin = open(f"{d}/admin.tok").read().strip()

    def token(name):
        out = subprocess.run([KITT, "serve", "token", "create", "--name", name, "--scope", "agent", "--output", "json"],
                             env=env, capture_output=True, text=True, check=True)
        return json.loads(out.stdout)["token"]

    agents = []
    for name in ["bench-a"]:
        t = token(name)
        subprocess.run([KITT, "agent", "--config", f"{d}/{name}.json", "init", "--server", f"http://127.0.0.1:{port}",
                        "--token-file", "-", "--allow-native", "--state-dir", f"{d}/state-{name}"],
                       input=t, env=env, text=True, check=True, capture_output=True)
        agents.append(subprocess.Popen([KITT, "agent", "--config", f"{d}/{name}.json", "start"], env=env,
                                       stderr=open(f"{d}/{name}.log", "w")))
    time.sleep(1.5)

    def post(path, body, tok):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("POST", path, body=json.dumps(body), headers={"Authorization": f"Bearer {tok}",
                                                                "Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, json.loads(r.read() or b"null")

    # 1. The wall time against processes, and the handover between units on the agent.
    def run_suite(yaml):
        open(f"{d}/suites/s.yaml", "w").write(yaml)
        status, v = post("/api/v1/runs", {"suite": "s.yaml"}, admin)
        assert status == 201, v
        run = v["run_dir"]
        while not os.path.exists(f"{run}/report/result.json"):
            time.sleep(0.01)
        return run

    # Journal records as the agent's kitt work wrote them (their unix_ns) until they are in the
    # server's shard (seen by polling every 2 ms): what `kitt runs follow` and the events see.
    lags = []
    done = threading.Event()

    def tail(run_dir):
        offsets = {}
        while not done.is_set():
            jdir = f"{run_dir}/journal"
            for f in os.listdir(jdir) if os.path.isdir(jdir) else []:
                p = f"{jdir}/{f}"
                with open(p, "rb") as fh:
                    fh.seek(offsets.get(p, 0))
                    data = fh.read()
                end = data.rfind(b"\n")
                if end < 0:
                    continue
                offsets[p] = offsets.get(p, 0) + end + 1
                now = time.time_ns()
                for line in data[:end].split(b"\n"):
                    lags.append((now - json.loads(line)["unix_ns"]) / 1e6)
            time.sleep(0.002)

    t0 = time.time()
    open(f"{d}/suites/s.yaml", "w").write(SUITE)
    status, v = post("/api/v1/runs", {"suite": "s.yaml"}, admin)
    assert status == 201, v
    run = v["run_dir"]
    tailer = threading.Thread(target=tail, args=(run,))
    tailer.start()
    while not os.path.exists(f"{run}/report/result.json"):
        time.sleep(0.01)
    agents_wall = time.time() - t0
    done.set()
    tailer.join()
    lags.sort()
    recs = sorted((json.load(open(f"{run}/agents/{f}")) for f in os.listdir(f"{run}/agents")
                   if f.endswith(".json")), key=lambda r: r["claimed_unix_ns"])
    gaps = sorted((b["claimed_unix_ns"] - a["ended_unix_ns"]) / 1e6 for a, b in zip(recs, recs[1:]))
    units = len(recs)
    t0 = time.time()
    subprocess.run([KITT, "apply", f"{d}/suites/s.yaml", "--executor", "processes", "-q", "--runs-dir", f"{d}/runs2"],
                   env=env, check=True, capture_output=True)
    local_wall = time.time() - t0
    print(f"12 units on one agent: {agents_wall:.2f} s vs --executor processes {local_wall:.2f} s: "
          f"{(agents_wall - local_wall) / units * 1000:+.0f} ms per unit; handover (a unit's finish to the next claim) "
          f"p50 {statistics.median(gaps):.1f} ms, max {max(gaps):.1f} ms")
    print(f"journal record written on the agent -> in the server's shard: {len(lags)} records, "
          f"p50 {lags[len(lags) // 2]:.1f} ms, p99 {lags[int(len(lags) * 0.99)]:.1f} ms, max {lags[-1]:.1f} ms")
    waits = []
    one = SUITE.replace("[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]", "[1]")
    for _ in range(10):
        run = run_suite(one)
        ex = json.load(open(f"{run}/executor.json"))
        for unit, sub in ex["units"].items():
            r = json.load(open(f"{run}/agents/{unit}.{sub['attempt']}.json"))
            waits.append((r["claimed_unix_ns"] - sub["submitted_unix_ns"]) / 1e6)
    waits.sort()
    print(f"unit queued -> claimed by an idle agent, 10 runs: p50 {statistics.median(waits):.1f} ms, "
          f"max {max(waits):.1f} ms")

    # 2. An idle agent.
    a = agents[0].pid
    c0, t0 = cpu(a), time.time()
    time.sleep(SECONDS)
    share = (cpu(a) - c0) / (time.time() - t0) * 100
    print(f"idle agent over {SECONDS} s (heartbeat 10 s): {share:.3f} % of a core, RSS {rss_mb(a):.1f} MB")
    agents[0].terminate()
    agents[0].wait()

    # 3. Many agents beating once a second.
    toks = []
    for i in range(N_AGENTS):
        toks.append(token(f"sim-{i}"))
    reg = {"protocol": [1, 0], "kitt_version": "0", "build": "b", "target": "t", "hostname": "h", "fingerprint": "f",
           "fingerprint_identity": "i", "gpus": [], "slots": 1, "docker": False}
    for t in toks:
        assert post("/api/v1/agent/register", reg, t)[0] == 200
    lat = []
    lock = threading.Lock()
    stop = time.time() + SECONDS

    def beat(t, offset):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        nxt = time.time() + offset
        body = json.dumps({"units": [], "gpus": [], "disk_free_bytes": 0})
        while nxt < stop:
            time.sleep(max(0.0, nxt - time.time()))
            s = time.perf_counter()
            c.request("POST", "/api/v1/agent/heartbeat", body=body,
                      headers={"Authorization": f"Bearer {t}", "Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            with lock:
                lat.append((time.perf_counter() - s) * 1000)
            nxt += 1.0

    c0, w0 = cpu(serve.pid), time.time()
    th = [threading.Thread(target=beat, args=(t, i / N_AGENTS)) for i, t in enumerate(toks)]
    for x in th:
        x.start()
    for x in th:
        x.join()
    share = (cpu(serve.pid) - c0) / (time.time() - w0) * 100
    lat.sort()
    # The same agents idle, each holding a claim that waits for a unit (the queue is empty).
    def idle_claim(t):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        body = json.dumps({"wait_ms": 25000, "gpus_free": 0})
        while time.time() < stop2:
            c.request("POST", "/api/v1/agent/claim", body=body,
                      headers={"Authorization": f"Bearer {t}", "Content-Type": "application/json"})
            c.getresponse().read()

    stop2 = time.time() + SECONDS
    th = [threading.Thread(target=idle_claim, args=(t,)) for t in toks]
    for x in th:
        x.start()
    time.sleep(3)
    c1, w1 = cpu(serve.pid), time.time()
    time.sleep(SECONDS - 6)
    idle_share = (cpu(serve.pid) - c1) / (time.time() - w1) * 100
    for x in th:
        x.join()
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    print(f"{N_AGENTS} agents beating 1/s for {SECONDS} s: {len(lat)} heartbeats, p50 {p(0.5):.1f} ms, "
          f"p99 {p(0.99):.1f} ms, max {lat[-1]:.1f} ms; server {share:.0f} % of a core, RSS {rss_mb(serve.pid):.1f} MB")
    print(f"{N_AGENTS} agents each holding a waiting claim (empty queue): server {idle_share:.1f} % of a core")
    serve.terminate()
    serve.wait()


main()
