#!/bin/sh
# pilotfactory worker VM user data (etc/worker/; etc/worker/README.md says more).
# Rendered per worker by the EC2, OpenStack and CondorEC2 submit plugins
# (batchsubmit.<plugin>.user_data_file). Placeholders, each in single braces:
#   {{worker_id}}      the worker id, advertised as PilotFactoryWorker (CondorEC2: empty;
#                      that VM joins by its EC2InstanceID)
#   {{factory_id}}     the factory id (PilotFactoryId)
#   {{queue}}          the factory queue (PilotFactoryQueue)
#   {{collector}}      the pool's collector, or empty (the image's own)
#   {{condor_config}}  HTCondor config lines: who the VM is, PilotFactoryLeaseUntil and
#                      PilotFactoryDeadline, and START (its queue's jobs only, none that cannot
#                      end before the deadline, none after an interruption notice)
#   {{lease_until}}    epoch seconds the lease ends at launch (0: no lease, no lease loop)
#   {{lease_grace}}    seconds past the lease before the VM powers off hard
#   {{deadline}}       epoch seconds the VM's life ends (0: none)
#   {{token}}          an IDTOKEN minted for this worker (ADVERTISE_STARTD, ADVERTISE_MASTER,
#                      READ; expires), or empty: the image's own credential
#   {{metadata_url}}   the instance metadata base URL
# A placeholder in double braces is written in single braces (as in this header).
# The VM: advertises its worker and instance id; takes only its queue's jobs; attaches fast;
# powers off once unclaimed for STARTD_NOCLAIM_SHUTDOWN seconds, or past its lease (peaceful
# retire) and lease + grace (hard), or when its startd is retired; advertises a spot notice;
# keeps job users away from the metadata service. Needs python3 (every cloud-init image has it).
set -u
umask 022
MD='{metadata_url}'
PF=/etc/condor/pilotfactory
mkdir -p /etc/condor/config.d "$PF"
# 0. What the VM runs and how it lives (HTCondor config).
cat >"$PF/pfvm" <<'PILOTFACTORY_EOF'
#!/usr/bin/env python3
"""pilotfactory VM helper (etc/worker): metadata, the spot notice cron, the lease loop."""
import calendar, json, os, re, shutil, subprocess, sys, time, urllib.request

OPEN = urllib.request.build_opener(urllib.request.ProxyHandler({})).open


def get(base, path):
    """A metadata value (IMDSv2 session token when the service has one), else None."""
    hdr = {}
    try:
        req = urllib.request.Request(base + "/latest/api/token", method="PUT",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
        hdr["X-aws-ec2-metadata-token"] = OPEN(req, timeout=2).read().decode()
    except Exception:
        pass
    try:
        with OPEN(urllib.request.Request(base + path, headers=hdr), timeout=2) as r:
            return r.read().decode()
    except Exception:
        return None


def notice(base):
    """Startd cron: the provider's interruption notice as two attributes (none: no output)."""
    body = get(base, "/latest/meta-data/spot/instance-action")
    if body:
        d = json.loads(body)
        at = calendar.timegm(time.strptime(d["time"], "%Y-%m-%dT%H:%M:%SZ"))
        print(f"PilotFactoryInterruption = {at}")
        print('PilotFactoryInterruptionAction = "%s"' % re.sub(r"[^a-z-]", "", d["action"]))


def lease_ad(name):
    cons = f'MyType == "PilotFactoryLease" && Name == "{name}"'
    try:
        out = subprocess.run(["condor_status", "-any", "-constraint", cons, "-af",
                              "PilotFactoryLeaseUntil"], capture_output=True, text=True,
                             timeout=20, check=False).stdout
        return max([int(float(v)) for v in out.split() if re.match(r"^[0-9.]+$", v)] or [0])
    except Exception:
        return 0


def say(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def lease(name, until, grace, period=30.0):
    """Past the lease (the later of the launch value and the factory's lease ad) the startd
    retires peacefully; past lease + grace the VM powers off, jobs or not."""
    retired = False
    poweroff = shutil.which("poweroff") or "/sbin/poweroff"
    while True:
        end = max(until, lease_ad(name))
        now = time.time()
        if now >= end + grace:
            say("lease", end, "+ grace", grace, "passed: powering off")
            subprocess.run([poweroff, "-f"], check=False)
            return
        if now >= end and not retired:
            say("lease", end, "passed: retiring the startd peacefully")
            env = dict(os.environ, _CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS="FS")
            subprocess.run(["condor_off", "-peaceful", "-daemon", "startd"], env=env, check=False)
            retired = True
        nxt = end + grace if retired else end
        time.sleep(max(1.0, min(period, nxt - now)))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "get":
        v = get(args[0], args[1])
        sys.exit(print(v.strip()) if v else 1)
    elif cmd == "notice":
        notice(args[0])
    elif cmd == "lease":
        lease(args[0], int(args[1]), int(args[2]))
PILOTFACTORY_EOF
chmod 0755 "$PF/pfvm"
cat >/etc/condor/config.d/90-pilotfactory.conf <<'PILOTFACTORY_EOF'
{condor_config}
PILOTFACTORY_EOF
cat >/etc/condor/config.d/92-pilotfactory-life.conf <<'PILOTFACTORY_EOF'
# pilotfactory worker life (etc/worker): fast attach, self-shutdown, spot notice.
# Fast attach: the startd and master send their first ad at start; then every 20 s (the
# default 300 s would hide a slot's state changes from the negotiator and the factory), no
# benchmarks before the first ad, the notice cron at once.
UPDATE_INTERVAL = 20
MASTER_UPDATE_INTERVAL = 20
UPDATE_OFFSET = 0
RUNBENCHMARKS = False
# Self-shutdown: a startd unclaimed this long exits; the master exits once its startd is gone
# (not in its first minute: the startd is not up yet) and runs the power-off on its way out.
STARTD_NOCLAIM_SHUTDOWN = 1200
MASTER.DAEMON_SHUTDOWN = (STARTD_StartTime =?= 0) && (time() - DaemonStartTime > 60)
DEFAULT_MASTER_SHUTDOWN_SCRIPT = /sbin/poweroff
# Spot notice: the provider's instance-action metadata as PilotFactoryInterruption[Action].
STARTD_CRON_JOBLIST = $(STARTD_CRON_JOBLIST) PILOTFACTORY_NOTICE
STARTD_CRON_PILOTFACTORY_NOTICE_EXECUTABLE = /usr/bin/python3
STARTD_CRON_PILOTFACTORY_NOTICE_ARGS = /etc/condor/pilotfactory/pfvm notice {metadata_url}
STARTD_CRON_PILOTFACTORY_NOTICE_PERIOD = 5
STARTD_CRON_PILOTFACTORY_NOTICE_MODE = Periodic
STARTD_CRON_PILOTFACTORY_NOTICE_RECONFIG = False
PILOTFACTORY_EOF
# 1. The token minted for this worker, owner-only in the token directory (none: the image's
#    own credential is used).
TOKEN='{token}'
if [ -n "$TOKEN" ]; then
    (umask 077 && mkdir -p /etc/condor/tokens.d &&
        printf '%s\n' "$TOKEN" >/etc/condor/tokens.d/pilotfactory.token)
fi
unset TOKEN
# 2. Job users cannot reach the instance metadata (root and condor can).
MDHOST=${MD#*://}
MDHOST=${MDHOST%%[:/]*}
if command -v iptables >/dev/null 2>&1; then
    iptables -A OUTPUT -d "$MDHOST" -m owner --uid-owner 0 -j ACCEPT
    iptables -A OUTPUT -d "$MDHOST" -m owner --uid-owner condor -j ACCEPT
    iptables -A OUTPUT -d "$MDHOST" -j REJECT
else
    echo "pilotfactory: no iptables: job users can reach $MDHOST" >&2
fi
# 3. Who the VM is: its worker id and queue, its instance id from the metadata.
IID=$(python3 "$PF/pfvm" get "$MD" /latest/meta-data/instance-id || true)
case $IID in *[!A-Za-z0-9_-]*) IID= ;; esac
if [ -n "$IID" ]; then
    printf '%s\n' "EC2InstanceID = \"$IID\"" 'STARTD_ATTRS = $(STARTD_ATTRS) EC2InstanceID' \
        'MASTER_ATTRS = $(MASTER_ATTRS) EC2InstanceID' >/etc/condor/config.d/91-pilotfactory-instance.conf
fi
# 4. The dead-man's lease: a root loop (lease 0: none).
if [ '{lease_until}' -gt 0 ]; then
    setsid python3 "$PF/pfvm" lease '{factory_id}/{queue}' '{lease_until}' '{lease_grace}' \
        >"$PF/lease.log" 2>&1 </dev/null &
fi
systemctl try-restart condor >/dev/null 2>&1 || true
