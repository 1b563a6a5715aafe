#!/bin/sh
# snmptrapd traphandle program for SMTP-MONITOR-MIB notifications: appends one summary line
# per notification to LOGFILE (default /var/log/smtp-monitor/traps.log), e.g.
#   2026-11-22T10:00:00Z smtpProbeFailed from 192.0.2.10 probe=relay host=mail.example.org port=25 status=failed phase=connect reason=refused consecutive=2 error="connect: connection refused"
#
# Usage in snmptrapd.conf (see snmptrapd.conf next to this file):
#   traphandle .1.3.6.1.4.1.32473.1.0.1 /usr/local/lib/smtp-monitor/smtp-monitor-traphandler.sh [LOGFILE]
# snmptrapd writes the notification to standard input: the sender's host name, its transport
# address, then one "OID VALUE" line per varbind. `outputOption n` in snmptrapd.conf makes the
# OIDs numeric; names starting with "iso." (no MIBs loaded) are understood as well.
set -u
LOGFILE=${1:-/var/log/smtp-monitor/traps.log}

line=$(awk -v now="$(date -u +%Y-%m-%dT%H:%M:%SZ)" '
BEGIN {
    split("smtpProbeFailed smtpProbeRecovered mxCheckFailed mxCheckRecovered smtpCertExpiring deliveryProbeFailed deliveryProbeRecovered deliveryLate deliveryLost", notif, " ")
    split("ok failed unknown", status, " ")
    split("none resolve connect tls banner ehlo starttls ehlo_tls quit mx address hosts internal auth mail rcpt dane mta_sts reverse policy submit deliver fetch cleanup dnsbl spoof", phase, " ")
    split("none timeout refused unreachable reset dns reply protocol tls tls_verify nxdomain no_mx null_mx no_address servfail unexpected_mx hosts_down internal unexpected_banner missing_extension auth_failed open_relay dane_mismatch mta_sts_mismatch no_starttls auth_unavailable tls_version unexpected_reply dnssec reverse_dns policy_record late lost wrong_folder auth_verdict listed spoofable", reason, " ")
    # column number -> key, for smtpProbeEntry (.2.2.1), mxCheckEntry (.2.3.1) and deliveryEntry (.2.7.1)
    split("2=probe 3=host 4=port 7=status 8=error 9=phase 10=reason 11=reply 17=consecutive 25=cert_days_left", s, " ")
    for (i in s) { split(s[i], kv, "="); smtp[kv[1]] = kv[2] }
    split("2=check 3=domain 4=status 5=error 6=phase 7=reason 10=consecutive", m, " ")
    for (i in m) { split(m[i], kv, "="); mx[kv[1]] = kv[2] }
    split("2=probe 3=to 4=status 5=error 6=phase 7=reason 8=reply 9=latency_ms 11=pending 12=late 13=lost 14=consecutive 28=message_latency_ms", d, " ")
    for (i in d) { split(d[i], kv, "="); delivery[kv[1]] = kv[2] }
    name = "unknown"; order = ""
}
NR == 1 { next }                                   # host name (often just the address)
NR == 2 {                                          # "UDP: [192.0.2.10]:50000->[...]:162"
    from = $0
    if (match($0, /\[[^]]*\]/)) from = substr($0, RSTART + 1, RLENGTH - 2)
    next
}
{
    oid = $1
    sub(/^iso\./, ".1.", oid)
    sub(/^1\./, ".1.", oid)
    value = $0
    sub(/^[^ ]+ /, "", value)
    if (oid == ".1.3.6.1.6.3.1.1.4.1.0") {         # snmpTrapOID.0
        sub(/^iso\./, ".1.", value)
        name = value
        if (index(value, ".1.3.6.1.4.1.32473.1.0.") == 1) {
            n = substr(value, 24) + 0
            if (n in notif) name = notif[n]
        }
        next
    }
    key = ""
    if (index(oid, ".1.3.6.1.4.1.32473.2.2.1.") == 1) {
        split(substr(oid, 26), arc, "."); if (arc[1] in smtp) key = smtp[arc[1]]
    } else if (index(oid, ".1.3.6.1.4.1.32473.2.3.1.") == 1) {
        split(substr(oid, 26), arc, "."); if (arc[1] in mx) key = mx[arc[1]]
    } else if (index(oid, ".1.3.6.1.4.1.32473.2.7.1.") == 1) {
        split(substr(oid, 26), arc, "."); if (arc[1] in delivery) key = delivery[arc[1]]
    }
    if (key == "") next
    if (value ~ /^".*"$/) {
        value = substr(value, 2, length(value) - 2)
        gsub(/\\"/, "\"", value)
    }
    if (key == "status" && (value + 0) in status) value = status[value + 0]
    if (key == "phase" && (value + 0) in phase) value = phase[value + 0]
    if (key == "reason" && (value + 0) in reason) value = reason[value + 0]
    if (key == "reply" && value == "0") next         # no reply code: not a reply failure
    if (key == "error") {
        if (value == "") next
        gsub(/"/, "\\\"", value)
        value = "\"" value "\""
    } else {
        gsub(/[ \t]+/, "_", value)
    }
    if (!(key in seen)) { seen[key] = 1; order = order " " key }
    field[key] = value
}
END {
    out = now " " name " from " from
    n = split(order, keys, " ")
    for (i = 1; i <= n; i++) out = out " " keys[i] "=" field[keys[i]]
    print out
}')

# One write of one short line: concurrent handlers do not interleave (O_APPEND).
printf '%s\n' "$line" >> "$LOGFILE"
