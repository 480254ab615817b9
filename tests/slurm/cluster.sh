#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for testing the workflow's SLURM profile:
# munged, MariaDB, slurmdbd (accounting, so sacct works), slurmctld and slurmd, with one fake GPU.
#
#   tests/slurm/cluster.sh up   [DIR]   start everything; all state, logs, sockets and pid files in DIR
#   tests/slurm/cluster.sh env  [DIR]   print the exports that point SLURM's commands at the cluster:
#                                       eval "$(tests/slurm/cluster.sh env)"
#   tests/slurm/cluster.sh down [DIR]   stop the daemons by the PIDs recorded in DIR, then remove DIR
#
# DIR defaults to $QACLIMS_SLURM_DIR, else ${TMPDIR:-/tmp}/qaclims-slurm. Needs root and the packages
# of tests/slurm/install.sh. Nothing outside DIR is written: munged gets its own key and socket, MariaDB
# its own data directory, and every daemon listens on 127.0.0.1 on free ports, so a system SLURM or
# munge (if any) is left alone. Daemons are stopped by PID, never by name.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

CMD=${1:-}
DIR=${2:-${QACLIMS_SLURM_DIR:-${TMPDIR:-/tmp}/qaclims-slurm}}
MARKER="$DIR/.qaclims-slurm-cluster"
CLUSTER=qaclims
PARTITION=debug
ACCOUNT=qaclims
GPU_MODEL=fake       # the fake GPU's GRES type: jobs may ask for --gpus=1 or --gpus=fake:1
WAIT_S=${QACLIMS_SLURM_WAIT_S:-60}   # bound for every wait loop

log() { echo "cluster.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The daemons in start order; `down` stops them in reverse. Each has DIR/run/<name>.pid.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

pid_of() {  # prints the recorded PID of daemon $1 if that process is alive and still daemon $1
    local f="$DIR/run/$1.pid" pid exe
    [ -s "$f" ] || return 1
    pid=$(tr -dc '0-9' <"$f")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    # A stale pid file whose PID was reused by another program must not get that program killed.
    # (Debian installs slurmctld and slurmd as slurmctld-wlm and slurmd-wlm.)
    exe=$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null || true)")
    exe=${exe% (deleted)}
    [ "$exe" = "$1" ] || [ "$exe" = "$1-wlm" ] || return 1
    echo "$pid"
}

wait_for() {  # wait_for DESCRIPTION COMMAND...: retry COMMAND every 0.5 s for at most WAIT_S s
    local what=$1; shift
    local deadline=$((SECONDS + WAIT_S))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { log "timed out after ${WAIT_S}s waiting for $what"; return 1; }
        sleep 0.5
    done
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_ports() {  # prints 4 free TCP ports on 127.0.0.1 (slurmctld, slurmd, slurmdbd, mariadb)
    local base p found=()
    for _ in $(seq 1 50); do
        base=$((20000 + RANDOM % 30000))
        found=()
        for p in $((base)) $((base + 1)) $((base + 2)) $((base + 3)); do
            port_free "$p" && found+=("$p")
        done
        [ ${#found[@]} -eq 4 ] && { echo "${found[@]}"; return 0; }
    done
    return 1
}

show_logs() {
    local f
    for f in "$DIR"/log/*.log "$DIR"/munge/munged.log; do
        [ -s "$f" ] || continue
        log "---- last lines of $f"
        tail -n 15 "$f" >&2 || true
    done
}

cmd_env() {
    [ -f "$DIR/etc/slurm.conf" ] || die "no cluster configured in $DIR (run: $0 up $DIR)"
    echo "export SLURM_CONF=$DIR/etc/slurm.conf"
    echo "export PATH=$DIR/bin:\$PATH"
    echo "export QACLIMS_SLURM_DIR=$DIR"
    echo "export QACLIMS_SLURM_PARTITION=$PARTITION"
    echo "export QACLIMS_SLURM_ACCOUNT=$ACCOUNT"
    echo "export QACLIMS_SLURM_GPU_MODEL=$GPU_MODEL"
}

cmd_down() {
    if [ ! -e "$DIR" ]; then
        log "nothing to stop: $DIR does not exist"
        return 0
    fi
    [ -f "$MARKER" ] || die "$DIR was not made by $0 (no $(basename "$MARKER")); not touching it"
    export SLURM_CONF="$DIR/etc/slurm.conf"
    # Cancel whatever still runs so no job (or its slurmstepd) outlives the cluster.
    if pid_of slurmctld >/dev/null; then
        timeout 10 scancel --user=root 2>/dev/null || true
        local deadline=$((SECONDS + 15))
        while [ $SECONDS -lt $deadline ] &&
              [ -n "$(timeout 5 squeue -h -o %i 2>/dev/null || true)" ]; do
            sleep 0.5
        done
    fi
    local i name pid
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        name=${DAEMONS[$i]}
        pid=$(pid_of "$name") || continue
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 20))
        while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) ignored SIGTERM for 20 s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        log "stopped $name (pid $pid)"
    done
    rm -rf "$DIR"
    log "removed $DIR"
}

up_checks() {  # refuse to start without touching anything (and without tearing anything down)
    [ "$(id -u)" -eq 0 ] || die "must run as root (munged and slurmd need it)"
    local b
    for b in munged munge unmunge mariadbd mariadb-install-db mariadb slurmdbd slurmctld slurmd \
             sacctmgr sinfo scontrol srun; do
        command -v "$b" >/dev/null || die "'$b' not found: run tests/slurm/install.sh first"
    done
    if [ -e "$DIR" ]; then
        local name
        for name in "${DAEMONS[@]}"; do
            pid_of "$name" >/dev/null && die "$name is already running from $DIR ($0 down $DIR)"
        done
        [ -f "$MARKER" ] || [ -z "$(ls -A "$DIR")" ] || die "$DIR exists and is not a cluster dir"
    fi
}

cmd_up() {  # after up_checks; a failure here tears down what was started
    mkdir -p "$DIR"
    touch "$MARKER"
    # munged runs as the munge user and must reach its folder inside DIR.
    chmod 755 "$DIR"
    mkdir -p "$DIR"/{etc,run,log,state,spool,munge,mysql}
    runuser -u munge -- test -x "$DIR" ||
        die "the munge user cannot enter $DIR; choose a DIR whose parents are world-executable"

    local host cpus realmem ports
    host=$(hostname -s)
    cpus=$(nproc)
    realmem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    [ -n "$realmem" ] || die "could not read RealMemory from 'slurmd -C'"
    realmem=$((realmem * 85 / 100))   # headroom for the OS, as on a real node
    ports=$(pick_ports) || die "no 4 free ports found on 127.0.0.1"
    read -r PORT_CTLD PORT_SLURMD PORT_DBD PORT_DB <<<"$ports"
    local sock="$DIR/munge/munge.socket" dbpass
    dbpass=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')

    # ---- munge: a private key and socket
    head -c 1024 /dev/urandom >"$DIR/munge/munge.key"
    chown -R munge:munge "$DIR/munge"
    chmod 755 "$DIR/munge"   # clients must reach the socket; the key itself stays 0600
    chmod 600 "$DIR/munge/munge.key"
    runuser -u munge -- munged --socket="$sock" --key-file="$DIR/munge/munge.key" \
        --log-file="$DIR/munge/munged.log" --pid-file="$DIR/munge/munged.pid" \
        --seed-file="$DIR/munge/munged.seed" </dev/null >>"$DIR/log/munged.out" 2>&1
    wait_for "munged's pid file" test -s "$DIR/munge/munged.pid"
    cp "$DIR/munge/munged.pid" "$DIR/run/munged.pid"
    wait_for "munge credentials" bash -c "munge -n -S '$sock' | unmunge -S '$sock'"

    # ---- MariaDB for slurmdbd, on 127.0.0.1 only
    mariadb-install-db --no-defaults --user=root --datadir="$DIR/mysql/data" \
        --auth-root-authentication-method=socket --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 ||
        { tail -n 20 "$DIR/log/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
    # setsid + redirections: the daemon keeps none of our terminal, pipes or process group.
    setsid mariadbd --no-defaults --user=root --datadir="$DIR/mysql/data" \
        --socket="$DIR/mysql/mysqld.sock" --port="$PORT_DB" --bind-address=127.0.0.1 \
        --pid-file="$DIR/run/mariadbd.pid" --log-error="$DIR/log/mariadb.log" \
        --skip-name-resolve --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 \
        </dev/null >>"$DIR/log/mariadb.out" 2>&1 &
    echo $! >"$DIR/run/mariadbd.pid"
    wait_for "MariaDB" mariadb-admin --no-defaults --socket="$DIR/mysql/mysqld.sock" ping
    mariadb --no-defaults --socket="$DIR/mysql/mysqld.sock" -u root -e "
        CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$dbpass';
        CREATE DATABASE slurm_acct_db;
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

    # ---- SLURM configuration
    cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$sock
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort=$PORT_DBD
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$PORT_DB
StorageUser=slurm
StoragePass=$dbpass
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DIR/etc/slurmdbd.conf"

    cat >"$DIR/etc/slurm.conf" <<EOF
# Written by tests/slurm/cluster.sh: a one-node test cluster, everything under $DIR.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT_CTLD
SlurmdPort=$PORT_SLURMD
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# No cgroups in a container: track processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
# Finished jobs stay visible to squeue for 10 min (the plugin may fall back to squeue).
MinJobAge=600
ReturnToService=2
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$PORT_DBD
# For slurmdbd connections SLURM reads the munge socket from here, not from AuthInfo.
AccountingStoragePass=$sock
# Record GPU requests (any GPU and the typed one) in ReqTRES/AllocTRES so sacct shows them.
AccountingStorageTRES=gres/gpu,gres/gpu:$GPU_MODEL
# Keep the job comment: the Snakemake plugin writes the rule name there (rule_<name>).
AccountingStoreFlags=job_comment
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$realmem Gres=gpu:$GPU_MODEL:1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    # The fake GPU: a GRES backed by /dev/null; jobs that ask for it get CUDA_VISIBLE_DEVICES=0.
    cat >"$DIR/etc/gres.conf" <<EOF
AutoDetect=off
NodeName=$host Name=gpu Type=$GPU_MODEL File=/dev/null Count=1
EOF
    export SLURM_CONF="$DIR/etc/slurm.conf"

    # Snakemake's jobstep executor drops every SLURM_* variable, SLURM_CONF included, before the
    # `srun` it runs inside each job. Nodes of a real cluster then read /etc/slurm/slurm.conf; this
    # cluster's configuration lives only in DIR, so `env` puts this srun first on PATH.
    mkdir -p "$DIR/bin"
    local SRUN=/usr/bin/srun
    [ -x "$SRUN" ] || SRUN=$(command -v srun)
    cat >"$DIR/bin/srun" <<EOF
#!/bin/sh
export SLURM_CONF="\${SLURM_CONF:-$SLURM_CONF}"
exec $SRUN "\$@"
EOF
    chmod 755 "$DIR/bin/srun"

    # ---- slurmdbd, then the cluster's accounts (sacct needs them), then the controller and node
    slurmdbd </dev/null >>"$DIR/log/slurmdbd.out" 2>&1
    wait_for "slurmdbd" bash -c "sacctmgr -n list cluster >/dev/null"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
    sacctmgr -i add account "$ACCOUNT" Description="qaclims tests" Organization=qaclims >/dev/null
    sacctmgr -i add user root Account="$ACCOUNT" >/dev/null
    slurmctld </dev/null >>"$DIR/log/slurmctld.out" 2>&1
    wait_for "slurmctld" scontrol ping
    slurmd </dev/null >>"$DIR/log/slurmd.out" 2>&1
    wait_for "node $host to become idle" \
        bash -c "sinfo -h -n '$host' -o %T | grep -qx idle"
    log "up in ${SECONDS}s: $cpus CPUs, ${realmem} MB, 1 GPU of model '$GPU_MODEL' (fake)," \
        "partition '$PARTITION', account '$ACCOUNT'"
}

case "$CMD" in
    up)
        up_checks
        # A subshell with its own errexit (an `if` around it would switch errexit off).
        set +e
        (set -e; cmd_up)
        rc=$?
        set -e
        if [ $rc -ne 0 ]; then
            show_logs
            if [ "${QACLIMS_SLURM_KEEP:-0}" = 1 ]; then
                log "bring-up failed; QACLIMS_SLURM_KEEP=1: left as is for debugging ($0 down $DIR)"
            else
                log "bring-up failed; tearing down"
                cmd_down || true
            fi
            exit 1
        fi
        cmd_env
        ;;
    env) cmd_env ;;
    down) cmd_down ;;
    *) echo "usage: $0 up|env|down [DIR]" >&2; exit 2 ;;
esac
