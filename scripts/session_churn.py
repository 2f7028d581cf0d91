# Creates, watches and leaves sessions in rounds and prints the server's resident memory.
# Usage: ROUNDS=8 python3 scripts/session_churn.py   (needs: pip install websockets; a release build)
import asyncio, json, os, subprocess, tempfile, time

import websockets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/endless/target"))
B = os.path.join(TARGET, "release", "endless")
p = subprocess.Popen([B, "--listen", "127.0.0.1:0", "--size", "256x256", "--fps", "12", "--set", "sessions.idle_timeout_secs=2",
                      "--recordings-dir", tempfile.mkdtemp(), "--set", f"server.web_dir={ROOT}/web", "serve"],
                     stdout=subprocess.PIPE, env={**os.environ, "RUST_LOG": "warn"})
addr = p.stdout.readline().decode().strip().rsplit("http://", 1)[1]
def rss():
    return int([l for l in open(f"/proc/{p.pid}/status") if l.startswith("VmRSS")][0].split()[1]) // 1024
async def cycle(i):
    async with websockets.connect(f"ws://{addr}/ws", max_size=None) as ws:
        await ws.send(json.dumps({"type": "create", "prompt": "hills at dawn, panning left", "seed": i}))
        c = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "watch", "session": c["session"], "token": c["token"]}))
        n, t0 = 0, time.time()
        while time.time() - t0 < 1.0:
            m = await ws.recv()
            n += isinstance(m, bytes)
async def main():
    print("start", rss(), "MiB")
    for round_ in range(int(os.environ.get("ROUNDS", "3"))):
        for i in range(20):
            await cycle(round_ * 100 + i)
        await asyncio.sleep(4)  # idle eviction
        sessions = json.loads(subprocess.run(["curl", "-s", f"http://{addr}/api/sessions"], capture_output=True).stdout)
        print(f"after {(round_+1)*20} sessions created/watched/left: RSS {rss()} MiB, live sessions {len(sessions)}")
asyncio.run(main())
p.terminate(); p.wait()
