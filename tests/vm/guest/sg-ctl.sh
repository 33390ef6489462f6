#!/bin/bash
# The guest's end of the control channel (the VM's second serial port). The host sends one line
# per command, "<id> <command>"; the guest runs it with a bounded time and answers
#   @@BEGIN <id>
#   <output>
#   @@END <id> <exit code>
# On start it announces "@@READY <boot id>", so the host knows the guest is up (again, after a
# reboot). Test VMs only: this is a root shell on a serial port.
set -u
PORT=/dev/ttyS1
# A step never runs longer than this; the host's own wait is longer still.
STEP_TIMEOUT=240

stty -F "$PORT" raw -echo -icrnl -onlcr 115200
exec <"$PORT" >"$PORT" 2>&1
echo "@@READY $(cat /proc/sys/kernel/random/boot_id)"
while IFS=' ' read -r id command; do
    [ -n "$id" ] || continue
    output=$(timeout --kill-after=5 "$STEP_TIMEOUT" bash -c "$command" 2>&1 </dev/null)
    rc=$?
    printf '@@BEGIN %s\n%s\n@@END %s %d\n' "$id" "$output" "$id" "$rc"
done
