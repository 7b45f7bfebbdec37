#!/usr/bin/env bash
# Data-parallel training across a network, not only shared memory: two
# "hosts" on one machine made with network namespaces joined by a veth pair
# (addresses exist only inside the namespaces), mpirun over TCP with a
# hostfile, one rank per host. The 2-host run must equal one process with the
# global batch (losses and adapter within 1e-5). Where namespaces cannot be
# made (no privileges), says so and skips (exit 0).
#   Tests/mpi/netns.sh [path to lora-cli]
set -euo pipefail
cd "$(dirname "$0")/../.."
lora=$(realpath "${1:-.build/release/lora-cli}")
command -v mpirun >/dev/null || { echo "netns test: mpirun missing (scripts/bootstrap.sh installs openmpi-bin)" >&2; exit 1; }
command -v ip >/dev/null || { echo "netns test: ip missing (scripts/bootstrap.sh installs iproute2)" >&2; exit 1; }
a=lora-mpi-a-$$ b=lora-mpi-b-$$
work=$(mktemp -d)
cleanup() { ip netns del "$a" 2>/dev/null || true; ip netns del "$b" 2>/dev/null || true; [[ -n ${KEEP:-} ]] || rm -rf "$work"; }
trap cleanup EXIT
if ! ip netns add "$a" 2>"$work/err" || ! ip netns add "$b" 2>>"$work/err"; then
    echo "netns test: SKIPPED: cannot create network namespaces here ($(head -1 "$work/err")); needs root or CAP_SYS_ADMIN"
    exit 0
fi
ip link add veth-a$$ type veth peer name veth-b$$
ip link set veth-a$$ netns "$a"
ip link set veth-b$$ netns "$b"
ip -n "$a" addr add 10.231.7.1/24 dev veth-a$$
ip -n "$b" addr add 10.231.7.2/24 dev veth-b$$
for ns in "$a" "$b"; do ip -n "$ns" link set lo up; done
ip -n "$a" link set veth-a$$ up
ip -n "$b" link set veth-b$$ up

# mpirun starts its daemon on the other host through an rsh agent: this one
# enters that host's namespace (and gives it its own host name) instead of ssh.
cat > "$work/netns-rsh" <<AGENT
#!/bin/sh
# Called by mpirun as: netns-rsh [options] HOST COMMAND...
while [ "\${1#-}" != "\$1" ]; do shift; done
host=\$1; shift
case \$host in
    10.231.7.1) ns=$a ;;
    10.231.7.2) ns=$b ;;
    *) echo "netns-rsh: unknown host \$host" >&2; exit 1 ;;
esac
exec ip netns exec "\$ns" unshare --uts sh -c "hostname lora-\$host; \$*"
AGENT
chmod +x "$work/netns-rsh"
printf '10.231.7.1 slots=1\n10.231.7.2 slots=1\n' > "$work/hostfile"

python3 - "$work" <<'PY'
import json, random, sys
r = random.Random(9)
words = "the captain said that logic is the beginning of wisdom not the end space final frontier".split()
with open(sys.argv[1] + "/data.jsonl", "w") as f:
    for i in range(30):
        f.write(json.dumps({"text": " ".join(r.choice(words) for _ in range(r.randint(3, 14)))}) + "\n")
PY
common=(train --model "$PWD/Tests/LoRATests/Fixtures/gpt2-tok" "$work/data.jsonl" --block-size 32 --r 4 --lora-alpha 8
        --learning-rate 1e-3 --seed 3 --threads 1 --max-steps 6 --lora-dropout 0.1)
timeout -k 5 120 "$lora" "${common[@]}" --batch-size 4 --output-dir "$work/one" > "$work/one.log" 2>&1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
bytes() { ip netns exec "$a" cat /sys/class/net/veth-a$$/statistics/tx_bytes; }
tx0=$(bytes)
t0=$SECONDS
if ! ip netns exec "$a" timeout -k 5 180 mpirun -np 2 --hostfile "$work/hostfile" --map-by node \
        --mca plm_rsh_agent "$work/netns-rsh" --mca btl tcp,self --mca btl_tcp_if_include 10.231.7.0/24 \
        --mca oob_tcp_if_include 10.231.7.0/24 -x PATH \
        "$lora" "${common[@]}" --batch-size 2 --distributed mpi --output-dir "$work/two" > "$work/two.log" 2>&1; then
    echo "FAIL: mpirun across the namespaces:"; cat "$work/two.log"; exit 1
fi
grep -q "distributed: 2 ranks;" "$work/two.log" || { echo "FAIL: not a 2-rank run:"; cat "$work/two.log"; exit 1; }
# The gradients went over the veth pair: 6 steps of the 2-rank ring carry at least the adapter's gradients once.
tx=$(( $(bytes) - tx0 ))
(( tx > 6 * 4 * 1000 )) || { echo "FAIL: only $tx bytes crossed the veth pair"; exit 1; }
echo "netns test: $tx bytes sent over the veth pair"
echo "netns test: 2 hosts (10.231.7.1, 10.231.7.2 over a veth pair, TCP only) trained in $((SECONDS - t0)) s; $(grep -o 'allreduce.*' "$work/two.log")"
python3 Tests/mpi/compare.py "$work/one" "$work/two" --steps 6
