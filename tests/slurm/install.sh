#!/usr/bin/env bash
# Installs the Debian packages for a one-machine SLURM cluster with accounting (tests/slurm/cluster.sh):
# munge, slurmctld, slurmd, the client tools, slurmdbd and MariaDB. Idempotent: when every binary is
# already there it returns at once without touching apt. apt does not start the services; cluster.sh
# starts its own daemons from a temp folder.
# Needs root (apt-get). Exit 0 = everything present; non-zero = could not install (message on stderr).
set -euo pipefail

PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
BINARIES=(munged munge unmunge slurmctld slurmd slurmdbd sbatch srun sacct sacctmgr squeue scontrol
          mariadbd mariadb-install-db)

missing() {
    local b
    for b in "${BINARIES[@]}"; do
        PATH="$PATH:/usr/sbin:/sbin" command -v "$b" >/dev/null 2>&1 || { echo "$b"; return 0; }
    done
    return 1
}

if ! m=$(missing); then
    echo "install.sh: SLURM, munge and MariaDB already installed"
    exit 0
fi
echo "install.sh: '$m' missing; installing ${PACKAGES[*]}"

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: need root to run apt-get" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# A stale package list can point at files the mirror no longer has: refresh once, bounded in time.
timeout 300 apt-get update -qq
timeout 600 apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null

if m=$(missing); then
    echo "install.sh: '$m' still missing after apt-get install" >&2
    exit 1
fi
echo "install.sh: installed"
