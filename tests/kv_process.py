"""What the Python checks share: the kv_server binary they run (KV_SERVER, default the debug
build) and starting it on a port it picks, learnt from its log line."""

import os
import re
import subprocess
import sys
import time

KV_SERVER = os.environ.get("KV_SERVER", "target/debug/kv_server")


def start_server(log_path, *args):
    """Starts kv_server --websocket with ARGS on 127.0.0.1 and a free port, its log in
    LOG_PATH; returns the process and its port once it accepts, or exits with the log."""
    log = open(log_path, "w")
    server = subprocess.Popen(
        [KV_SERVER, "--bind", "127.0.0.1", "--port", "0", "--websocket", *args],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    for _ in range(100):
        match = re.search(r"Accepting connections on port (\d+)", open(log_path).read())
        if match:
            return server, int(match.group(1))
        time.sleep(0.1)
    server.kill()
    sys.exit(f"{os.path.basename(sys.argv[0])}: the server did not start:\n" + open(log_path).read())
