#!/usr/bin/env bash
# Installs Slurm and MUNGE (Debian's slurm-wlm and munge packages), which the real-cluster
# test (ci/tests/slurm.rs) starts a one-node cluster with. Idempotent: does nothing
# when the daemons and the client commands are already on PATH. Starts no daemon and
# writes no configuration; the test brings its own. Prints `slurmctld -V` on success.
set -euo pipefail

say() { printf 'ci/setup-slurm.sh: %s\n' "$*" >&2; }

# Debian puts the daemons in /usr/sbin, which a non-root PATH may lack.
PATH=$PATH:/usr/sbin:/sbin
need=(slurmctld slurmd munged sbatch sinfo squeue scontrol)
missing() {
    local c
    for c in "${need[@]}"; do command -v "$c" >/dev/null 2>&1 || return 0; done
    return 1
}
if ! missing; then
    slurmctld -V
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "Slurm is not installed and there is no apt-get to install it;" \
        "install slurmctld, slurmd, slurm-client and munge (Debian/Ubuntu:" \
        "apt-get install slurm-wlm munge) and run this again"
    exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
        say "installing slurm-wlm and munge needs root (or password-less sudo)"
        exit 1
    fi
fi
say "installing slurm-wlm and munge with apt-get (once)"
# Quiet unless it fails: the output goes to stderr only then.
log=$(mktemp)
if ! { $SUDO apt-get update &&
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends \
        slurm-wlm munge; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    say "apt-get install slurm-wlm munge failed (output above)"
    exit 1
fi
rm -f "$log"
if missing; then
    say "slurm-wlm and munge were installed but one of ${need[*]} is still missing"
    exit 1
fi
slurmctld -V
