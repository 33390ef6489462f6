#!/bin/bash
# The guest's steps of the VM scenario, run by the host over the control channel
# (tests/vm/guest/sg-ctl.sh). Each prints `key=value` lines for the host and exits non-zero with
# a reason on stderr when a step fails. Every wait is bounded.
set -euo pipefail
UNIT=serve-guard
IFACE=eth0
READY_URL=127.0.0.1:9464
PIN_DIR=/sys/fs/bpf/serve-guard
CONFIG=/etc/serve-guard/serve-guard.toml
# The agent built against glibc with libxdp (the package's static binary has no libxdp).
LIBXDP_BIN=/usr/local/lib/sg-vm/serve-guard-libxdp
# xdp-filter's own rule in the sharing check: UDP to the public port (open in serve-guard's
# policy) dropped, so a drop there can only be xdp-filter's.
FILTER_PORT=22
# A program outside libxdp's protocol for the TC fallback check: xdp-filter's allow-all program,
# loaded alone.
LONE_OBJECT=/usr/lib/x86_64-linux-gnu/bpf/xdpfilt_alw_all.o
# Bounds, in tenths of a second (TCG is slow: a start takes seconds).
WAIT_READY=900
WAIT_RESTART=900

fail() { echo "FAIL: $*" >&2; exit 1; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# CLOCK_BOOTTIME in ms, comparable with systemd's *TimestampMonotonic (no suspend in a test VM).
uptime_ms() { local u; u=$(cut -d' ' -f1 /proc/uptime); echo $(( ${u%.*} * 1000 + 10#${u#*.} * 10 )); }

# 0 when GET /ready answers 200 (the filter is attached and its maps are filled).
ready() {
    { exec 3<>"/dev/tcp/${READY_URL%:*}/${READY_URL#*:}"; } 2>/dev/null || return 1
    printf 'GET /ready HTTP/1.0\r\nHost: x\r\n\r\n' >&3
    local status
    status=$(timeout 5 head -n1 <&3 || true)
    exec 3<&- 3>&-
    [[ $status == *" 200 "* ]]
}

wait_for() { # <tenths> <command...>
    local limit=$1; shift
    for ((i = 0; i < limit; i++)); do
        "$@" && return 0
        sleep 0.1
    done
    return 1
}

# The XDP attachment of $IFACE: "driver", "generic" or "none", and the program's id.
xdp_state() {
    local line mode=none id=0
    line=$(ip -d link show dev "$IFACE")
    if [[ $line =~ mtu\ [0-9]+\ (xdp[a-z]*) ]]; then
        case ${BASH_REMATCH[1]} in
        xdp) mode=driver ;;
        xdpgeneric) mode=generic ;;
        *) mode=${BASH_REMATCH[1]} ;;
        esac
    fi
    [[ $line =~ prog/[a-z]+\ id\ ([0-9]+) ]] && id=${BASH_REMATCH[1]}
    echo "xdp_mode=$mode"
    echo "prog_id=$id"
}

main_pid() { systemctl show -P MainPID "$UNIT"; }

# What `xdp-loader status` lists on $IFACE: a dispatcher, serve-guard's and xdp-filter's programs.
share_state() {
    local status
    status=$(xdp-loader status "$IFACE" 2>&1 || true)
    echo "dispatcher=$(grep -q xdp_dispatcher <<<"$status" && echo yes || echo no)"
    echo "listed_sg=$(grep -q serve_guard <<<"$status" && echo yes || echo no)"
    echo "listed_filter=$(grep -q xdpfilt <<<"$status" && echo yes || echo no)"
    xdp_state
}

# Where serve-guard's TC program runs on $IFACE ("tcx", "clsact" or "none"), the program on the XDP
# hook, and `status`'s interfaces line. tc(8) lists clsact filters; a tcx link is found by its pin
# (the image has no bpftool, and iproute2 here lists no tcx links).
tc_state() {
    if tc filter show dev "$IFACE" ingress 2>/dev/null | grep -q serve_guard_tc; then
        echo "tc_hook=clsact"
    elif [ -e "$PIN_DIR/links/$IFACE@tcx" ]; then
        echo "tc_hook=tcx"
    else
        echo "tc_hook=none"
    fi
    echo "xdp_holder=$(xdp-loader status "$IFACE" 2>/dev/null | grep -q xdpfilt && echo lone || echo none)"
    serve-guard status -c "$CONFIG" 2>/dev/null | grep '^interfaces:' | tr ' ' '~' | sed 's/^/status_line=/' || true
    xdp_state
}

case ${1:-} in
info)
    echo "kernel=$(uname -r)"
    echo "systemd=$(systemctl --version | head -n1 | cut -d' ' -f2)"
    xdp_state
    ;;
start)
    t0=$(now_ms)
    systemctl enable --now "$UNIT" || fail "systemctl enable --now failed: $(systemctl status --no-pager -n 20 "$UNIT" 2>&1)"
    t_active=$(now_ms)
    wait_for "$WAIT_READY" ready || fail "not ready: $(journalctl -u "$UNIT" -b --no-pager -n 20 -o cat)"
    ready_at_ms=$(uptime_ms)
    # From systemd starting the unit (its ExecStartPre= included) to GET /ready answering 200;
    # `enable` itself (a daemon-reload) is not the unit's time.
    started_at_ms=$(( $(systemctl show -P InactiveExitTimestampMonotonic "$UNIT") / 1000 ))
    echo "enable_ms=$((t_active - t0))"
    echo "ready_ms=$((ready_at_ms - started_at_ms))"
    echo "unit_type=$(systemctl show -P Type "$UNIT")"
    xdp_state
    ;;
state)
    echo "active=$(systemctl is-active "$UNIT" || true)"
    echo "main_pid=$(main_pid)"
    if ready; then echo "ready=yes"; else echo "ready=no"; fi
    xdp_state
    if [ -d "$PIN_DIR" ]; then echo "pins=$(ls "$PIN_DIR" | wc -l)"; else echo "pins=0"; fi
    ;;
outbound)
    # The guest's own connections to hosts outside its VPC list: `outbound ADDR... PORT`. Per
    # address a TCP connection reading the server's line, and an echo on a connected UDP socket.
    # Their replies come from outside to an ephemeral port, which the default policy guards.
    # A refusal (the host's server not listening yet) is retried; a timeout is a drop.
    shift
    python3 - "$@" <<'PY'
import socket, sys, time
*addrs, port = sys.argv[1:]
port = int(port)

def fam(a):
    return socket.AF_INET6 if ":" in a else socket.AF_INET

def tcp(a):
    with socket.socket(fam(a), socket.SOCK_STREAM) as s:
        s.settimeout(3)
        s.connect((a, port))
        return "pass" if s.recv(64).startswith(b"ok") else "bad_answer"

def udp(a):
    with socket.socket(fam(a), socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        s.connect((a, port))
        for _ in range(3):
            s.send(b"outbound")
            try:
                return "pass" if s.recv(64) == b"outbound" else "bad_answer"
            except (socket.timeout, TimeoutError):
                continue
        return "drop"

def attempt(f, a):
    deadline = time.monotonic() + 10
    while True:
        try:
            return f(a)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                return "refused"
            time.sleep(0.2)
        except (socket.timeout, TimeoutError):
            return "drop"
        except OSError as e:
            return "error:" + str(e).replace(" ", "_")

for a in addrs:
    v = "v6" if ":" in a else "v4"
    print(f"tcp_{v}={attempt(tcp, a)}")
    print(f"udp_{v}={attempt(udp, a)}")
PY
    ;;
kill9)
    old=$(main_pid)
    [ "$old" -gt 0 ] || fail "the unit has no main process"
    restarts=$(systemctl show -P NRestarts "$UNIT")
    t0=$(now_ms)
    kill -9 "$old"
    restarted() { local p; p=$(main_pid); [ "$p" -gt 0 ] && [ "$p" != "$old" ] && ready; }
    wait_for "$WAIT_RESTART" restarted || fail "not restarted and ready: $(systemctl status --no-pager -n 20 "$UNIT" 2>&1)"
    echo "restart_ms=$(($(now_ms) - t0))"
    echo "old_pid=$old"
    echo "new_pid=$(main_pid)"
    echo "restarts=$(( $(systemctl show -P NRestarts "$UNIT") - restarts ))"
    # The agent's summary line says whether it adopted the pinned link or made a new one.
    if journalctl -b _PID="$(main_pid)" -o cat --no-pager | grep -Eq "$IFACE \([a-z]+, adopted\)"; then
        echo "adopted=yes"
    else
        echo "adopted=no"
    fi
    xdp_state
    ;;
reload)
    if [ -z "$(systemctl show -P ExecReload "$UNIT")" ]; then
        echo "reload=unsupported"
        exit 0
    fi
    old=$(main_pid)
    systemctl reload "$UNIT" || fail "systemctl reload failed: $(journalctl -u "$UNIT" -b --no-pager -n 20 -o cat)"
    wait_for "$WAIT_READY" ready || fail "not ready after reload"
    echo "reload=done"
    echo "same_pid=$([ "$(main_pid)" = "$old" ] && echo yes || echo no)"
    echo "active=$(systemctl is-active "$UNIT" || true)"
    xdp_state
    ;;
stop)
    systemctl stop "$UNIT" || fail "systemctl stop failed"
    echo "active=$(systemctl is-active "$UNIT" || true)"
    xdp_state
    ;;
reboot)
    # Queued, not waited for: the host waits for the next boot's @@READY instead.
    systemctl --no-block reboot
    ;;
boot-times)
    # The unit's start on this boot, from systemd's own timestamps (monotonic, microseconds).
    # This channel comes up early in the boot: wait for the agent first.
    wait_for "$WAIT_READY" ready || fail "not ready after boot: $(journalctl -u "$UNIT" -b --no-pager -n 20 -o cat)"
    echo "active=$(systemctl is-active "$UNIT" || true)"
    exit_us=$(systemctl show -P InactiveExitTimestampMonotonic "$UNIT")
    active_us=$(systemctl show -P ActiveEnterTimestampMonotonic "$UNIT")
    network_pre_us=$(systemctl show -P ActiveEnterTimestampMonotonic network-pre.target)
    echo "unit_start_ms=$(( (active_us - exit_us) / 1000 ))"
    echo "unit_active_at_ms=$(( active_us / 1000 ))"
    echo "network_pre_at_ms=$(( network_pre_us / 1000 ))"
    xdp_state
    ;;
detach)
    systemctl stop "$UNIT" || fail "systemctl stop failed"
    serve-guard detach || fail "serve-guard detach failed"
    xdp_state
    if [ -d "$PIN_DIR" ]; then echo "pins=$(ls "$PIN_DIR" | wc -l)"; else echo "pins=0"; fi
    ;;
share-start)
    # Issue 20: xdp-filter (libxdp) first with a rule of its own, then serve-guard joins its
    # dispatcher under systemd. The detach step left the interface bare and the unit stopped.
    xdp-filter load -m native "$IFACE" || fail "xdp-filter load failed"
    xdp-filter port "$FILTER_PORT" -m dst -p udp >/dev/null || fail "xdp-filter port failed"
    mkdir -p "/etc/systemd/system/$UNIT.service.d"
    # libxdp opens the programs on the interface by id (BPF_PROG_GET_FD_BY_ID), which the
    # kernel allows with CAP_SYS_ADMIN only (docs/operations.md).
    printf '[Service]\nExecStart=\nExecStart=%s run -c %s\nCapabilityBoundingSet=CAP_SYS_ADMIN\nAmbientCapabilities=CAP_SYS_ADMIN\n' \
        "$LIBXDP_BIN" "$CONFIG" >"/etc/systemd/system/$UNIT.service.d/libxdp.conf"
    grep -q '^xdp_attach' "$CONFIG" || sed -i '1i xdp_attach = "dispatcher"' "$CONFIG"
    systemctl daemon-reload
    systemctl start "$UNIT" || fail "start failed: $(journalctl -u "$UNIT" -b --no-pager -n 20 -o cat)"
    wait_for "$WAIT_READY" ready || fail "not ready: $(journalctl -u "$UNIT" -b --no-pager -n 20 -o cat)"
    share_state
    ;;
share-leave)
    # xdp-filter leaves while the host's stream runs: serve-guard stays, alone in a dispatcher.
    xdp-filter unload "$IFACE" >/dev/null || fail "xdp-filter unload failed"
    share_state
    ;;
share-kill9-join)
    # The agent is killed and xdp-filter joins while it is gone; systemd restarts it, and it
    # adopts its slot (a new copy in, the old one out).
    old=$(main_pid)
    [ "$old" -gt 0 ] || fail "the unit has no main process"
    kill -9 "$old"
    xdp-filter load -m native "$IFACE" || fail "xdp-filter load failed"
    xdp-filter port "$FILTER_PORT" -m dst -p udp >/dev/null || fail "xdp-filter port failed"
    restarted() { local p; p=$(main_pid); [ "$p" -gt 0 ] && [ "$p" != "$old" ] && ready; }
    wait_for "$WAIT_RESTART" restarted || fail "not restarted and ready: $(journalctl -u "$UNIT" -b --no-pager -n 20 -o cat)"
    share_state
    ;;
share-status)
    "$LIBXDP_BIN" status -c "$CONFIG" | grep '^dispatcher:' | tr ' ' '~' | sed 's/^/status_line=/'
    ;;
share-detach)
    # `detach` takes serve-guard's program out; xdp-filter stays with its rule.
    systemctl stop "$UNIT" || fail "systemctl stop failed"
    # Without the agent, `status` reads the slot from the kernel (it exits 3: not running).
    offline=$("$LIBXDP_BIN" status -c "$CONFIG" 2>/dev/null || true)
    echo "offline_status=$(grep -q '^dispatcher:' <<<"$offline" && echo yes || echo no)"
    "$LIBXDP_BIN" detach -c "$CONFIG" >/dev/null || fail "detach failed"
    share_state
    xdp-filter unload "$IFACE" >/dev/null || true
    rm -f "/etc/systemd/system/$UNIT.service.d/libxdp.conf"
    sed -i '/^xdp_attach/d' "$CONFIG"
    systemctl daemon-reload
    ;;
tc-start)
    # Issue 20: a lone XDP program holds eth0 (no dispatcher); the packaged agent filters at TC
    # ingress beside it (clsact before Linux 6.6, tcx after). The unit is stopped, eth0 bare.
    LIBXDP_SKIP_DISPATCHER=1 xdp-loader load -m native "$IFACE" "$LONE_OBJECT" ||
        fail "xdp-loader load failed"
    # The image's config asks for driver mode, which forbids the fallback (a refusal).
    sed -i 's/^xdp_mode = .*/xdp_mode = "auto"/' "$CONFIG"
    systemctl start "$UNIT" || fail "start failed: $(journalctl -u "$UNIT" -b --no-pager -n 20 -o cat)"
    wait_for "$WAIT_READY" ready || fail "not ready: $(journalctl -u "$UNIT" -b --no-pager -n 20 -o cat)"
    tc_state
    ;;
tc-kill9)
    # kill -9 while the host's stream runs: the TC filter stays, the restart adopts it.
    old=$(main_pid)
    [ "$old" -gt 0 ] || fail "the unit has no main process"
    kill -9 "$old"
    restarted() { local p; p=$(main_pid); [ "$p" -gt 0 ] && [ "$p" != "$old" ] && ready; }
    wait_for "$WAIT_RESTART" restarted || fail "not restarted and ready: $(journalctl -u "$UNIT" -b --no-pager -n 20 -o cat)"
    tc_state
    ;;
tc-detach)
    systemctl stop "$UNIT" || fail "systemctl stop failed"
    serve-guard detach >/dev/null || fail "detach failed"
    tc_state
    xdp-loader unload --all "$IFACE" >/dev/null 2>&1 || ip link set dev "$IFACE" xdp off
    sed -i 's/^xdp_mode = .*/xdp_mode = "driver"/' "$CONFIG"
    ;;
journal)
    # Every boot's lines of the unit (the journal is persistent): errors, and ANSI escapes.
    errors=$(journalctl -u "$UNIT" -p err -o cat --no-pager -q || true)
    escapes=$(journalctl -u "$UNIT" -o cat --no-pager -q | grep -c $'\e' || true)
    echo "lines=$(journalctl -u "$UNIT" -o cat --no-pager -q | wc -l)"
    echo "error_lines=$(printf '%s' "$errors" | grep -c . || true)"
    echo "escape_lines=$escapes"
    # The whole journal of the unit for the host's run folder, escapes made visible.
    echo "@@JOURNAL"
    journalctl -u "$UNIT" -o short-monotonic --all --no-pager -q | cat -v
    ;;
*)
    fail "unknown step '${1:-}'"
    ;;
esac
