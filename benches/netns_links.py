"""Real links for the benchmark scripts: a network namespace per host, each behind a veth
pair to the root namespace whose egress `tc tbf` shapes to a rate, the root namespace routing
between them (customers run there). As the balance study's `--links netns` does. Root only;
everything made is removed by `remove()`, also after a failure."""

import signal
import subprocess
import time

PREFIX = "msb"


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


class Links:
    """Host i lives in namespace `msb-<name>` at 10.77.<i>.2, its link's far end 10.77.<i>.1."""

    def __init__(self):
        self.made = []
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            self.forwarding = f.read().strip()

    def add(self, i, name, mbps):
        """A host behind a link of `mbps` Mbit/s out; returns (namespace, address)."""
        ns = f"{PREFIX}-{name}"
        host, inner = f"{PREFIX}h{i}", f"{PREFIX}n{i}"
        sh("ip", "netns", "add", ns)
        self.made.append((ns, host))
        sh("ip", "link", "add", host, "type", "veth", "peer", "name", inner)
        sh("ip", "link", "set", inner, "netns", ns)
        sh("ip", "addr", "add", f"10.77.{i}.1/24", "dev", host)
        sh("ip", "link", "set", host, "up")
        for cmd in (["ip", "addr", "add", f"10.77.{i}.2/24", "dev", inner],
                    ["ip", "link", "set", inner, "up"], ["ip", "link", "set", "lo", "up"],
                    ["ip", "route", "add", "default", "via", f"10.77.{i}.1"]):
            sh("ip", "netns", "exec", ns, *cmd)
        # A burst of a few milliseconds at the rate, a queue of about 50 ms.
        burst = max(32 * 1024, int(mbps * 1e6 / 8 * 0.004))
        sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", inner, "root", "tbf",
           "rate", f"{mbps}mbit", "burst", str(burst), "latency", "50ms")
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1")
        return ns, f"10.77.{i}.2"

    def remove(self):
        for ns, host in self.made:
            sh("ip", "link", "del", host, check=False)
            sh("ip", "netns", "del", ns, check=False)
        self.made = []
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write(self.forwarding)


class Procs:
    """Processes a run starts, each ended by `stop()` (SIGTERM, then SIGKILL after 10 s)."""

    def __init__(self):
        self.procs = []

    def start(self, args, log, ns=None):
        if ns:
            args = ["ip", "netns", "exec", ns] + args
        p = subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.time() + 10
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []
