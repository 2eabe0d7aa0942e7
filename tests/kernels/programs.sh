#!/usr/bin/env bash
# Real programs on --reactor=iouring, driven by real clients: twistd web
# serving a file to curl (compared byte for byte), and twistd dns answering
# dig over UDP and TCP.  Prints "ok <what>" or "FAIL <what>" per check and
# exits non-zero if any failed.  Used by the kernel matrix's guests; runs
# anywhere twistd, curl and dig are installed:
#
#   tests/kernels/programs.sh [path/to/twistd]
set -u
TWISTD=${1:-$(dirname "$(command -v python)")/twistd}
work=$(mktemp -d)
failed=0
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

ok() { echo "ok $*"; }
fail() { echo "FAIL $*"; failed=1; }

waitForPort() {
    local proto=$1 port=$2
    for _ in $(seq 600); do
        if [ "$proto" = tcp ]; then
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        else
            ss -lun | grep -q ":$port " && return 0
        fi
        sleep 0.1
    done
    return 1
}

usedIOUring() {
    grep -q "reactor class: uringreactor.reactor.IOUringReactor" "$1"
}

# -- twistd web + curl ------------------------------------------------------
mkdir "$work/site"
head -c 8388608 /dev/urandom >"$work/site/file.bin"
"$TWISTD" -n -l - --pidfile= --reactor=iouring web \
    --listen tcp:18080:interface=127.0.0.1 --path "$work/site" >"$work/web.log" 2>&1 &
web=$!
if waitForPort tcp 18080; then
    good=1
    for i in 1 2 3; do
        curl -sf -o "$work/got-$i" http://127.0.0.1:18080/file.bin &
    done
    wait $(jobs -p | grep -v "^$web$") 2>/dev/null
    for i in 1 2 3; do
        cmp -s "$work/site/file.bin" "$work/got-$i" || good=0
    done
    small=$(curl -sf http://127.0.0.1:18080/ | grep -c file.bin)
    if [ $good = 1 ] && [ "$small" -ge 1 ] && usedIOUring "$work/web.log"; then
        ok "twistd web: 3 parallel 8 MiB downloads byte-exact with curl, directory listing"
    else
        fail "twistd web: downloads differ or not on io_uring"
        tail -20 "$work/web.log"
    fi
else
    fail "twistd web did not listen"
    tail -20 "$work/web.log"
fi
kill $web 2>/dev/null
wait $web 2>/dev/null

# -- twistd dns + dig --------------------------------------------------------
cat >"$work/zone.py" <<'EOF'
zone = [
    SOA("example.test", mname="ns.example.test", rname="root.example.test",
        serial=1, refresh=60, retry=60, expire=60, minimum=60),
    A("www.example.test", "192.0.2.7"),
    MX("example.test", 10, "mail.example.test"),
    TXT("example.test", "uringreactor"),
]
EOF
"$TWISTD" -n -l - --pidfile= --reactor=iouring dns --pyzone "$work/zone.py" \
    -i 127.0.0.1 -p 10053 >"$work/dns.log" 2>&1 &
dns=$!
if waitForPort udp 10053 && waitForPort tcp 10053; then
    udp=$(dig @127.0.0.1 -p 10053 +short +tries=3 +time=5 www.example.test A)
    tcp=$(dig @127.0.0.1 -p 10053 +short +tcp +time=5 www.example.test A)
    mx=$(dig @127.0.0.1 -p 10053 +short +time=5 example.test MX)
    nx=$(dig @127.0.0.1 -p 10053 +time=5 nowhere.example.test A | grep -c NXDOMAIN)
    if [ "$udp" = 192.0.2.7 ] && [ "$tcp" = 192.0.2.7 ] \
            && [ "$mx" = "10 mail.example.test." ] && [ "$nx" = 1 ] \
            && usedIOUring "$work/dns.log"; then
        ok "twistd dns: dig A over UDP and TCP, MX, NXDOMAIN"
    else
        fail "twistd dns: udp='$udp' tcp='$tcp' mx='$mx' nxdomain=$nx"
        tail -20 "$work/dns.log"
    fi
else
    fail "twistd dns did not listen"
    tail -20 "$work/dns.log"
fi
kill $dns 2>/dev/null
wait $dns 2>/dev/null
exit $failed
