#!/bin/bash
# A real systemd (252) as PID 1 of fresh namespaces, for tests, on hosts whose own PID 1 is not
# systemd. It gets its own cgroup2 subtree, a private /run, /dev and /proc, a read-only /sys, the
# host's network (so its units reach servers on the host's 127.0.0.1), and a hermetic
# unit directory; the host is left alone.
#
#   testbed.sh start NAME DIR   set up DIR, start systemd, print the host PID of its PID 1
#   testbed.sh stop NAME DIR    stop it and remove its cgroups
#   testbed.sh inner NAME DIR   (internal) PID 1 of the new namespaces, execs systemd
#
# NAME: [A-Za-z0-9_-]+, the cgroup subtree and the target name. DIR: an empty state directory.
# Units of a test go into DIR/units (then `systemctl daemon-reload`); systemd's log is DIR/kmsg.log.
# `systemctl start user@UID.service` starts that user's manager (and, with dbus-user-session, its
# bus at /run/user/UID/bus); the user manager's log is DIR/user-UID.log.
set -euo pipefail

cgroup2_root() {
    if [ "$(stat -f -c %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ]; then
        echo /sys/fs/cgroup/unified
    elif [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ]; then
        echo /sys/fs/cgroup
    else
        echo "testbed: no cgroup2 hierarchy mounted" >&2
        exit 1
    fi
}

write_units() {
    local name=$1 units=$2
    mkdir -p "$units"
    local t
    for t in sysinit basic sockets timers paths slices local-fs local-fs-pre swap multi-user \
        shutdown umount final; do
        printf '[Unit]\nDescription=test bed stand-in for %s.target\nDefaultDependencies=no\n' \
            "$t" > "$units/$t.target"
    done
    printf '[Unit]\nDescription=test bed system slice\nDefaultDependencies=no\n' \
        > "$units/system.slice"
    printf '[Unit]\nDescription=test bed %s\nRequires=basic.target dbus.socket\nAfter=basic.target dbus.socket\nAllowIsolate=yes\n' \
        "$name" > "$units/$name.target"
    local u
    for u in dbus.service dbus.socket exit.target systemd-exit.service poweroff.target \
        systemd-poweroff.service halt.target systemd-halt.service \
        user@.service user-runtime-dir@.service user.slice; do
        ln -sf "/lib/systemd/system/$u" "$units/$u"
    done
    # Per-user managers: pam_systemd gets XDG_RUNTIME_DIR from logind, which the test bed does
    # not run; without it `systemd --user` refuses to start.
    local dir
    dir=$(dirname "$units")
    mkdir -p "$units/user@.service.d"
    printf '[Service]\nEnvironment=XDG_RUNTIME_DIR=/run/user/%%i\nStandardOutput=append:%s/user-%%i.log\nStandardError=append:%s/user-%%i.log\n' \
        "$dir" "$dir" > "$units/user@.service.d/testbed.conf"
}

# The host PID of the new namespaces' PID 1: a process of our cgroup subtree whose innermost
# namespace PID is 1.
find_pid1() {
    local cg=$1 f p ns
    for f in $(find "$cg" -name cgroup.procs 2>/dev/null); do
        for p in $(cat "$f" 2>/dev/null); do
            ns=$(awk '/^NSpid:/ { if (NF > 2) print $NF }' "/proc/$p/status" 2>/dev/null || true)
            if [ "$ns" = 1 ]; then
                echo "$p"
                return 0
            fi
        done
    done
    return 1
}

is_systemd() {
    case "$(readlink "/proc/$1/exe" 2>/dev/null)" in
        */lib/systemd/systemd) return 0 ;;
        *) return 1 ;;
    esac
}

start() {
    local name=$1 dir=$2
    local cg
    cg="$(cgroup2_root)/$name"
    if [ -e "$cg" ]; then
        echo "testbed: cgroup $cg already exists" >&2
        exit 1
    fi
    mkdir -p "$dir/empty"
    write_units "$name" "$dir/units"
    : > "$dir/kmsg.log"
    mkdir "$cg"
    (
        echo "$BASHPID" > "$cg/cgroup.procs"
        exec setsid unshare --pid --fork --kill-child --mount --uts --ipc --cgroup \
            --propagation private "$0" inner "$name" "$dir"
    ) < /dev/null > "$dir/outer.log" 2>&1 &
    local pid1="" i
    for i in $(seq 1 200); do
        if [ -z "$pid1" ]; then
            pid1=$(find_pid1 "$cg" || true)
        fi
        if [ -n "$pid1" ] && is_systemd "$pid1"; then
            state=$(nsenter -t "$pid1" -m -p systemctl is-system-running 2>/dev/null || true)
            if [ "$state" = running ]; then
                echo "$pid1" > "$dir/pid1"
                echo "$pid1"
                return 0
            fi
        fi
        sleep 0.05
    done
    echo "testbed: systemd did not come up (state: ${state:-none}); log:" >&2
    tail -n 30 "$dir/kmsg.log" "$dir/outer.log" >&2 || true
    stop "$name" "$dir"
    exit 1
}

inner() {
    local name=$1 dir=$2
    mount --make-rprivate /
    mount -t proc -o nosuid,nodev,noexec proc /proc
    mount --bind /proc/sys /proc/sys
    mount -o remount,bind,ro /proc/sys
    # The test bed shares the host's network namespace (agents in its units must reach a
    # stand-in API on the host's 127.0.0.1), and a fresh sysfs needs a network namespace of its
    # own: bind the host's sysfs read-only instead (no submounts), then a cgroup2 rooted at ours.
    mount --bind /sys /sys
    mount -o remount,bind,ro,nosuid,nodev,noexec /sys
    mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
    mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
    local dev=/run/.testbed-dev
    mkdir "$dev"
    mount -t tmpfs -o mode=755,nosuid tmpfs "$dev"
    local n
    for n in null zero full random urandom tty; do
        touch "$dev/$n"
        mount --bind "/dev/$n" "$dev/$n"
    done
    mkdir "$dev/pts" "$dev/shm"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$dev/pts"
    ln -s pts/ptmx "$dev/ptmx"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$dev/shm"
    ln -s /proc/self/fd "$dev/fd"
    ln -s /proc/self/fd/0 "$dev/stdin"
    ln -s /proc/self/fd/1 "$dev/stdout"
    ln -s /proc/self/fd/2 "$dev/stderr"
    touch "$dev/kmsg"
    mount --bind "$dir/kmsg.log" "$dev/kmsg"
    mount --move "$dev" /dev
    rmdir /run/.testbed-dev 2>/dev/null || true
    exec setpriv --bounding-set -sys_module,-sys_time,-sys_boot,-sys_rawio,-syslog,-wake_alarm -- \
        env -i container="$name" SYSTEMD_UNIT_PATH="$dir/units" \
        SYSTEMD_GENERATOR_PATH="$dir/empty" SYSTEMD_ENVIRONMENT_GENERATOR_PATH="$dir/empty" \
        PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        /lib/systemd/systemd --system --unit="$name.target" --log-target=kmsg --show-status=no
}

stop() {
    local name=$1 dir=$2
    local cg
    cg="$(cgroup2_root)/$name"
    local pid1
    pid1=$(cat "$dir/pid1" 2>/dev/null || find_pid1 "$cg" 2>/dev/null || true)
    if [ -n "$pid1" ] && [ -d "/proc/$pid1" ]; then
        timeout 3 nsenter -t "$pid1" -m -p systemctl exit --no-block > /dev/null 2>&1 || true
        local i
        for i in $(seq 1 60); do
            [ -d "/proc/$pid1" ] || break
            sleep 0.05
        done
    fi
    if [ -d "$cg" ]; then
        # Fallback: kill whatever is left in the subtree, systemd included.
        if [ -e "$cg/cgroup.kill" ]; then
            echo 1 > "$cg/cgroup.kill" 2>/dev/null || true
        fi
        if [ -n "$pid1" ] && [ -d "/proc/$pid1" ]; then
            if is_systemd "$pid1"; then
                kill -KILL "$pid1" 2>/dev/null || true
            fi
        fi
        for i in $(seq 1 100); do
            # Deepest first.
            find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
            [ -d "$cg" ] || break
            sleep 0.05
        done
    fi
    if [ -d "$cg" ]; then
        echo "testbed: could not remove $cg" >&2
        exit 1
    fi
}

case "${1:-}" in
    start) start "$2" "$3" ;;
    stop) stop "$2" "$3" ;;
    inner) inner "$2" "$3" ;;
    *) echo "usage: $0 start|stop NAME DIR" >&2; exit 2 ;;
esac
