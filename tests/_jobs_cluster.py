"""Driver of the Ray jobs test, run inside a network and PID namespace of its own (``unshare --net --pid``, only a
loopback interface): starts a Ray head with its job server on 127.0.0.1, runs the ``datacopilot submit / status /
stop`` scenarios the test prepared under WORK as subprocesses, and writes what each printed and returned to
WORK/results.json. When this process (PID 1 of the namespace) exits, the kernel ends every process left in it, so
the head never outlives the test.

    unshare --net --pid --fork --kill-child --mount-proc python tests/_jobs_cluster.py WORK RAY_TMP
"""

import json
import os
import subprocess
import sys
import time

ADDRESS = "http://127.0.0.1:8265"
# the head stores runtime_env packages up to this size (Ray's default is 512 MiB): the test's "big" working
# directory (20 MiB of random bytes) goes over it without a big file
HEAD_ENV = {"RAY_max_grpc_message_size": str(16 * 2**20)}


def cli(*args: str, timeout: float = 240) -> dict:
    p = subprocess.run([sys.executable, "-m", "datacopilot", *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "RAY_API_SERVER_ADDRESS": ADDRESS})
    return {"args": list(args), "rc": p.returncode, "out": p.stdout, "err": p.stderr}


def job_id(res: dict) -> str | None:
    for line in res["err"].splitlines():
        if line.startswith("submitted job "):
            return line.split()[2]
    return None


def status(job: str) -> str:
    res = cli("status", job, "--json", timeout=60)
    return json.loads(res["out"])["status"] if res["rc"] == 0 else f"rc {res['rc']}: {res['err']}"


def interrupt_follow(job: str) -> dict:
    """``status JOB --follow`` interrupted (SIGINT, as Ctrl-C) once it has streamed a line."""
    import signal

    p = subprocess.Popen([sys.executable, "-m", "datacopilot", "status", job, "--follow"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "RAY_API_SERVER_ADDRESS": ADDRESS})
    first = p.stdout.readline()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    return {"rc": p.returncode, "out": first + out, "err": err}


def listening() -> list[str]:
    import psutil

    return sorted({f"{c.laddr.ip}:{c.laddr.port}" for c in psutil.net_connections(kind="inet")
                   if c.status == psutil.CONN_LISTEN})


def packages(ray_tmp: str) -> dict:
    """The runtime_env packages the head unpacked: file paths relative to each package, per kind."""
    out = {}
    for kind in ("working_dir_files", "py_modules_files"):
        for root, _, files in os.walk(os.path.join(ray_tmp, "session_latest", "runtime_resources", kind)):
            parts = os.path.relpath(root, os.path.join(ray_tmp, "session_latest", "runtime_resources", kind))
            pkg, _, rel = parts.partition(os.sep)
            if pkg.startswith("_ray_pkg_"):
                out.setdefault(kind, {}).setdefault(pkg, []).extend(os.path.join(rel, f) if rel else f for f in files)
    return out


def main(work: str, ray_tmp: str) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    os.environ.pop("RAY_ADDRESS", None)
    # a token in ~/.ray/auth_token (any local ray.init() of Ray 2.60 writes one) would turn on the head's token auth
    os.environ["RAY_AUTH_MODE"] = "disabled"
    r = {}
    start = subprocess.run(["ray", "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                            "--port=6379", "--dashboard-port=8265", "--num-cpus=2", f"--temp-dir={ray_tmp}",
                            "--disable-usage-stats", "--include-dashboard=true"],
                           capture_output=True, text=True, timeout=180, env={**os.environ, **HEAD_ENV})
    r["start"] = {"rc": start.returncode, "out": start.stdout[-3000:], "err": start.stderr[-3000:]}
    try:
        if start.returncode == 0:
            scenarios(work, ray_tmp, r)
    finally:
        with open(os.path.join(work, "results.json"), "w") as f:
            json.dump(r, f, indent=1)


def scenarios(work: str, ray_tmp: str, r: dict) -> None:
    r["ok"] = cli("submit", os.path.join(work, "ok", "p.yaml"))
    job = job_id(r["ok"])
    r["status_ok"] = cli("status", job) if job else None
    r["follow_ok"] = cli("status", job, "--follow") if job else None
    r["resume_ok"] = cli("submit", os.path.join(work, "ok", "p.yaml"), "--resume")
    r["fail"] = cli("submit", os.path.join(work, "fail", "p.yaml"))
    failed = job_id(r["fail"])
    r["status_fail"] = cli("status", failed, "--logs") if failed else None
    r["unknown"] = cli("status", "raysubmit_nosuchjob")
    r["big"] = cli("submit", os.path.join(work, "big", "p.yaml"))
    r["long"] = cli("submit", os.path.join(work, "long", "p.yaml"), "--no-wait", "--job-id", "dc-long")
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not seen or seen[-1] in ("PENDING", "")):
        seen.append(status("dc-long"))
        time.sleep(1)
    r["long_seen"] = seen
    r["listening"] = listening()  # with the long job's driver and workers up
    r["interrupted"] = interrupt_follow("dc-long")
    r["long_after_interrupt"] = status("dc-long")
    r["stop"] = cli("stop", "dc-long")
    r["long_after"] = status("dc-long")
    r["stop_again"] = cli("stop", "dc-long")
    r["packages"] = packages(ray_tmp)


if __name__ == "__main__":
    main(*sys.argv[1:3])
