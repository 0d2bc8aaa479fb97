#!/usr/bin/env bash
# A newer Orthanc from a newer Debian's packages, in a tree made with debootstrap (Debian 13 and
# unstable need a newer libc than Debian 12's, so they cannot be installed next to the host's Orthanc
# 1.10): Orthanc 1.12 from Debian 13 (suite trixie), Orthanc 1.13 from Debian unstable (suite sid).
#
#   tools/debian-tree.sh build TREE SUITE  make TREE from SUITE once (about 70 s); nothing to do when
#                                          it is ready (a tree of another suite is made again)
#   tools/debian-tree.sh check TREE        exit 0 when TREE is ready
#   tools/debian-tree.sh version TREE      print the Orthanc and Python versions of TREE, one a line
#   tools/debian-tree.sh remove TREE       delete TREE (refused while something is mounted inside it)
#   tools/debian-tree.sh run TREE [--bind DIR]... [--cd DIR] -- COMMAND [ARG]...
#        run COMMAND inside TREE, in a private mount namespace where /proc, /dev, the repository, the
#        temporary folder and each --bind DIR are mounted at the same paths as outside (so no path
#        needs translating). The mounts vanish with the last process; COMMAND keeps the PID of this
#        script (every step execs), so signals and kill -9 of its process group reach it directly.
set -euo pipefail

PACKAGES=orthanc,orthanc-python,python3-smbc  # python3-smbc brings libsmbclient, whatever its package name
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# The stamp holds the tree's Python version (what `make` checks), its suite on a second line.
STAMP=.orthanc-nas-ready
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
SELF="$REPO/tools/debian-tree.sh"

die() { echo "debian-tree.sh: $*" >&2; exit 1; }

ready() {
    [ -f "$1/$STAMP" ] && chroot "$1" /usr/sbin/Orthanc --version >/dev/null 2>&1 \
        && chroot "$1" /usr/bin/python3 -c 'import smbc' 2>/dev/null
}

refuse_if_mounted() {
    # A mount inside the tree (a debootstrap cut short, a bind made by hand) would let rm -rf reach
    # the host's files through it.
    local dir
    dir=$(realpath -m "$1")
    if awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { found = 1; print "  " $5 } END { exit !found }' \
            /proc/self/mountinfo >&2; then
        die "refusing to delete $dir: the mounts above are inside it (umount them first)"
    fi
}

remove() {
    [ -e "$1" ] || return 0
    refuse_if_mounted "$1"
    rm -rf --one-file-system "$1"
}

suite() {
    sed -n 2p "$1/$STAMP" 2>/dev/null
}

build() {
    local tree=$1 suite=$2 partial="$1.partial"
    mkdir -p "$(dirname "$tree")"
    exec 9>"$tree.lock"
    flock 9  # two builds of the same tree at once wait for each other
    # (a stamp without a suite is from before there were two: a Debian 13 tree)
    ready "$tree" && [[ "$(suite "$tree")" = "$suite" || ( -z "$(suite "$tree")" && $suite = trixie ) ]] && return 0
    echo "making the Debian $suite tree $tree with $PACKAGES (about 70 s, once)"
    remove "$partial"
    # debootstrap mounts /proc and /sys inside the tree while it works: in a namespace of its own,
    # those mounts cannot outlive it, whatever stops it.
    unshare --mount --propagation private \
        debootstrap --variant=minbase --include="$PACKAGES" "$suite" "$partial" "$MIRROR" \
        >"$partial.log" 2>&1 || { tail -20 "$partial.log" >&2; die "debootstrap failed (log: $partial.log)"; }
    rm -f "$partial"/var/cache/apt/archives/*.deb
    { chroot "$partial" /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])'
      echo "$suite"; } >"$partial/$STAMP"
    remove "$tree"
    mv "$partial" "$tree"
    rm -f "$partial.log"
    ready "$tree" || die "the tree $tree was made but Orthanc does not run in it"
}

run() {
    local tree=$1; shift
    [ -f "$tree/$STAMP" ] || die "$tree is not ready: run 'make orthanc-1.12' or 'make orthanc-1.13'"
    exec unshare --mount --propagation private -- "$SELF" _inside "$(realpath "$tree")" "$@"
}

inside() {  # in the private mount namespace: mount, enter the tree, exec the command
    local tree=$1 wd=/ binds=("$REPO" "$(realpath "${TMPDIR:-/tmp}")") dir bound skip
    shift
    while [ $# -gt 0 ]; do
        case $1 in
            --bind) binds+=("$(realpath "$2")"); shift 2 ;;
            --cd) wd=$2; shift 2 ;;
            --) shift; break ;;
            *) die "unknown option $1" ;;
        esac
    done
    [ $# -gt 0 ] || die "no command given"
    mount -t proc proc "$tree/proc"
    mount --rbind /dev "$tree/dev"
    bound=()
    # Shortest first, and never a folder inside one already mounted: a test that deletes and makes
    # again a folder under /tmp must see the same inside as outside.
    while IFS= read -r dir; do
        skip=
        for b in "${bound[@]}"; do
            case $dir/ in "$b"/*) skip=1 ;; esac
        done
        [ -n "$skip" ] && continue
        mkdir -p "$tree$dir"
        mount --bind "$dir" "$tree$dir"
        bound+=("$dir")
    done < <(printf '%s\n' "${binds[@]}" | awk '!seen[$0]++ { print length($0) "\t" $0 }' | sort -k1,1n | cut -f2-)
    exec chroot "$tree" /bin/sh -c 'cd "$1" && shift && exec "$@"' sh "$wd" "$@"
}

version() {  # "Orthanc 1.13.0" from the first line of `Orthanc --version`, then "Python 3.14.0"
    chroot "$1" /usr/sbin/Orthanc --version | awk 'NR == 1 { print "Orthanc", $NF }'
    chroot "$1" /usr/bin/python3 -c 'import platform; print("Python", platform.python_version())'
}

[ $# -ge 2 ] || die "usage: $0 build|check|version|remove|run TREE ..."
command=$1 tree=$2
shift 2
case $command in
    build) [ $# -eq 1 ] || die "usage: $0 build TREE SUITE"; build "$tree" "$1" ;;
    check) ready "$tree" ;;
    version) version "$tree" ;;
    remove) remove "$tree"; rm -f "$tree.lock" ;;
    run) run "$tree" "$@" ;;
    _inside) inside "$tree" "$@" ;;
    *) die "unknown command $command" ;;
esac
