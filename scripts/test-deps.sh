#!/usr/bin/env bash
# Install the Debian packages the test suite runs for real: Postfix, NSD, Unbound, net-snmp tools,
# snmptrapd/snmpd, smitools, the base MIBs (erlang-snmp), promtool, openssl, python3-venv,
# the delivery chain's Dovecot, OpenDKIM, OpenDMARC and policyd-spf, and headless Chromium.
# Idempotent and quick when everything is present; never leaves a system Postfix on port 25,
# a system Unbound on port 53, nor a system Dovecot, OpenDKIM or OpenDMARC running.
set -euo pipefail

PACKAGES=(
    postfix       # the SMTP server the probes talk to (a private instance per test session)
    nsd           # authoritative DNS for the test zone (can express a null MX)
    unbound       # validating resolver for the DNSSEC tests (a private instance on a free port)
    snmp          # snmpget/snmpwalk/snmptable/snmptrap/snmptranslate
    snmptrapd     # notification receiver
    snmpd         # reference agent for side-by-side checks
    prometheus-snmp-exporter  # its generator builds snmp.yml from the MIB (deploy/snmp_exporter), and the exporter scrapes the agent
    smitools      # smilint
    erlang-snmp   # the only Debian package with the IETF base MIB texts (SNMPv2-SMI, ...)
    prometheus    # promtool, to check the metrics exposition
    openssl
    python3-venv
    systemd                  # systemd-analyze verify for deploy/systemd (no running systemd needed)
    prometheus-alertmanager  # amtool check-config for deploy/alertmanager
    shellcheck               # lint of deploy/snmp/smtp-monitor-traphandler.sh
    libcap2-bin              # setcap: the container image's file capability, tried on this machine
    # SMTP AUTH against the second test Postfix (tests/peers/postfix_sasl.py): Cyrus SASL
    sasl2-bin                # saslpasswd2, to write the instance's own sasldb file
    libsasl2-modules         # the PLAIN and LOGIN mechanisms and the sasldb auxprop plugin
    # The delivery chain (tests/peers/mail_chain.py): MSA Postfix -> MX Postfix -> Dovecot
    dovecot-core                # the mailbox server (a private instance; passwd-file users, Maildir)
    dovecot-imapd               # IMAP (STARTTLS and implicit TLS, IDLE, SPECIAL-USE \Junk)
    dovecot-pop3d               # POP3 (STLS and implicit TLS)
    dovecot-lmtpd               # LMTP: how the MX Postfix hands mail to Dovecot
    dovecot-sieve               # Sieve at delivery: a header rule files chosen mail into Junk
    opendkim                    # DKIM signing at the MSA and verifying at the MX (milter)
    opendkim-tools              # opendkim-genkey: the signing key and its DNS TXT record
    postfix-policyd-spf-python  # SPF check at the MX (a policy service spawned by Postfix)
    opendmarc                   # DMARC verdict at the MX (milter after OpenDKIM)
    dbconfig-no-thanks          # satisfies opendmarc's "dbconfig-mysql | ..." without a MySQL client
    # The status page in a real browser (tests/integration/test_status_page_browser.py): headless,
    # driven by selenium through Debian's chromedriver; no browser is downloaded at run time
    chromium
    chromium-driver
)

if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "test-deps: not root and no sudo: cannot install ${PACKAGES[*]}" >&2
    exit 1
fi

installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true) == "install ok installed" ]]
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "test-deps: all ${#PACKAGES[@]} packages present"
    exit 0
fi
echo "test-deps: installing ${missing[*]}"

postfix_was_installed=1
installed postfix || postfix_was_installed=0
unbound_was_installed=1
installed unbound || unbound_was_installed=0
dovecot_was_installed=1
installed dovecot-core || dovecot_was_installed=0
opendkim_was_installed=1
installed opendkim || opendkim_was_installed=0
opendmarc_was_installed=1
installed opendmarc || opendmarc_was_installed=0

# Keep package scripts from starting daemons (a system postfix on port 25, snmpd on 161,
# nsd or unbound on 53) unless the machine already has a policy of its own.
POLICY=/usr/sbin/policy-rc.d
own_policy=0
if [[ ! -e $POLICY ]]; then
    printf '#!/bin/sh\n# added by smtp-monitor scripts/test-deps.sh while installing\nexit 101\n' \
        | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY"
    own_policy=1
fi
cleanup() {
    if [[ $own_policy -eq 1 ]]; then
        "${SUDO[@]}" rm -f "$POLICY"
    fi
}
trap cleanup EXIT

# Postfix asks what kind of mail system this is; "Local only" needs no relay or domain.
echo "postfix postfix/main_mailer_type select Local only" | "${SUDO[@]}" debconf-set-selections
echo "postfix postfix/mailname string mail.test" | "${SUDO[@]}" debconf-set-selections

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"

for pkg in "${missing[@]}"; do
    installed "$pkg" || { echo "test-deps: $pkg did not install" >&2; exit 1; }
done

port25_open() {
    # bash's /dev/tcp: no ss/netstat needed; a refused connection fails fast
    timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/25' 2>/dev/null
}

# Tests run their own Postfix on free ports; a system one started by the package
# (where no policy-rc.d stopped it) must not keep running.
if [[ $postfix_was_installed -eq 0 ]]; then
    if "${SUDO[@]}" postfix status >/dev/null 2>&1; then
        echo "test-deps: the postfix package started a system Postfix; stopping it"
        "${SUDO[@]}" postfix stop || true
    fi
fi
# Tests run their own Unbound; the package enables a system resolver on port 53 (started at the
# next boot, or now where no policy-rc.d stopped it). Only an Unbound installed just now is touched.
if [[ $unbound_was_installed -eq 0 ]]; then
    if [[ -d /run/systemd/system ]]; then
        "${SUDO[@]}" systemctl disable --now unbound unbound-resolvconf >/dev/null 2>&1 || true
    else
        if [[ -f /run/unbound.pid ]]; then
            echo "test-deps: the unbound package started a system Unbound; stopping it"
            "${SUDO[@]}" start-stop-daemon --stop --quiet --oknodo --retry 10 \
                --pidfile /run/unbound.pid --exec /usr/sbin/unbound || true
        fi
        # systemctl edits the unit links without a running systemd, and the SysV links with them
        if command -v systemctl >/dev/null 2>&1; then
            "${SUDO[@]}" systemctl disable unbound unbound-resolvconf >/dev/null 2>&1 || true
        elif command -v update-rc.d >/dev/null 2>&1; then
            "${SUDO[@]}" update-rc.d unbound disable >/dev/null 2>&1 || true
        fi
    fi
    echo "test-deps: system Unbound disabled (the tests start their own)"
fi

# Tests run their own Dovecot, OpenDKIM and OpenDMARC; the packages enable system daemons (IMAP/POP3 on
# 143/993/110/995, a milter socket) started at the next boot, or now where no policy-rc.d stopped
# them. Only a package installed just now is touched: stop what it started, disable its start-up.
stop_system_daemon() {  # NAME PIDFILE EXECUTABLE
    if [[ -d /run/systemd/system ]]; then
        "${SUDO[@]}" systemctl disable --now "$1" >/dev/null 2>&1 || true
    else
        if [[ -f $2 ]]; then
            echo "test-deps: the $1 package started a system $1; stopping it"
            "${SUDO[@]}" start-stop-daemon --stop --quiet --oknodo --retry 10 \
                --pidfile "$2" --exec "$3" || true
        fi
        if command -v systemctl >/dev/null 2>&1; then
            "${SUDO[@]}" systemctl disable "$1" >/dev/null 2>&1 || true
        elif command -v update-rc.d >/dev/null 2>&1; then
            "${SUDO[@]}" update-rc.d "$1" disable >/dev/null 2>&1 || true
        fi
    fi
    echo "test-deps: system $1 disabled (the tests start their own)"
}
if [[ $dovecot_was_installed -eq 0 ]]; then
    stop_system_daemon dovecot /run/dovecot/master.pid /usr/sbin/dovecot
fi
if [[ $opendkim_was_installed -eq 0 ]]; then
    stop_system_daemon opendkim /run/opendkim/opendkim.pid /usr/sbin/opendkim
fi
if [[ $opendmarc_was_installed -eq 0 ]]; then
    stop_system_daemon opendmarc /run/opendmarc/opendmarc.pid /usr/sbin/opendmarc
fi

for _ in 1 2 3 4 5; do
    port25_open || break
    sleep 1  # a just-stopped Postfix may take a moment to close its socket
done
if port25_open; then
    echo "test-deps: warning: something listens on 127.0.0.1:25 (tests do not need it)" >&2
fi
echo "test-deps: done"
