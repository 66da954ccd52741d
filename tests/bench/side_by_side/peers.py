"""The configurations the platform is measured against, each in one throwaway container.

    bare    stock Postfix relaying to smtp-sink, in the source container (the ceiling)
    hops    the same Postfix passing each message through six SMTP hops, then smtp-sink: the
            floor of any design with the platform's hop count (no checks, no TLS, no LDAP)
    amavis  Postfix -> amavisd-new (SpamAssassin in process, ClamAV through clamd) -> Postfix
            -> virtual(8) to Maildir: the common ISP design
    rspamd  one Postfix with the rspamd milter and clamav-milter -> virtual(8) to Maildir
            (what mailcow/Mailu-style stacks do)

Every peer scans against the signatures the lab's gateways have (copied from a gateway,
read-only there), runs rspamd/SpamAssassin with the spamcheck host's DNS (its unbound
configuration) and, for rspamd, the spamcheck host's rspamd settings. The contract mix is
the platform's: the recipient without contracts (NO_CHECK) bypasses spam and virus checks
where the peer can (amavis per recipient, rspamd settings); clamav-milter scans every message.
Maildirs are on a host directory bind-mounted at /var/vmail, so the harness counts and reads
delivered files without entering the container.
"""

import shlex
import time

import containers

VMAIL_UID = 5000
DOMAINS = ["example.com", "example.org"]
# Postfix for every configuration: no chroot (the containers run no init script to copy
# files into it), the bare relay's process limit, a log file (no syslog in the containers).
POSTFIX_COMMON = [
    "inet_protocols=ipv4", "compatibility_level=3.6", "default_process_limit=100", "biff=no",
    "maillog_file=/var/log/postfix.log", "smtpd_tls_security_level=none", "smtp_tls_security_level=none",
    # Every bench message comes from the one source container: no per-client connection cap
    # (the default, half the process limit, refuses the open-loop sender's connections).
    "smtpd_client_connection_count_limit=0",
]
POSTFIX_MAILDIR = [
    "myhostname=bench-peer.example.net", "mydestination=localhost", "inet_interfaces=all", "mynetworks=127.0.0.0/8",
    "virtual_mailbox_domains=" + " ".join(DOMAINS), "virtual_mailbox_base=/var/vmail",
    "virtual_mailbox_maps=texthash:/etc/postfix/vmailbox", f"virtual_uid_maps=static:{VMAIL_UID}",
    f"virtual_gid_maps=static:{VMAIL_UID}", "virtual_minimum_uid=1000",
    "smtpd_recipient_restrictions=permit_mynetworks,reject_unauth_destination",
]
BARE = ["relayhost=[127.0.0.1]:2526", "mynetworks=127.0.0.0/8", "inet_interfaces=loopback-only", "mydestination="]
# The hops configuration: mail in on the first port passes smtpd, cleanup, the queue and the
# smtp client once per port (content_filter to the next), like the platform's contracted
# inbound path (edge, scan, std, route, vscan, mbox); the last relays to smtp-sink.
HOPS_PORTS = [2525, 10101, 10102, 10103, 10104, 10105]

CLAMAV_MILTER_PORT = 7357
RSPAMD_MILTER_PORT = 11332


def postconf(container, settings):
    containers.sh(container, "touch /etc/postfix/main.cf && postconf -F '*/*/chroot=n' && postconf -e "
                  + " ".join(shlex.quote(s) for s in POSTFIX_COMMON + settings) + " && newaliases")


def hop_services():
    """master.cf entries of the hops: each smtpd names itself (else the smtp client would see
    its own name in the next hop's greeting and call it a loop) and filters to the next port."""
    entries = []
    for number, port in enumerate(HOPS_PORTS, 1):
        following = HOPS_PORTS[number] if number < len(HOPS_PORTS) else None
        entries.append(f"127.0.0.1:{port}/inet=127.0.0.1:{port} inet n - n - - smtpd "
                       f"-o myhostname=hop{number}.bench.example.net "
                       f"-o content_filter={f'smtp:[127.0.0.1]:{following}' if following else ''}")
    return entries


def start_bare(container):
    """Postfix relaying to smtp-sink, both in `container` (the source container), with the
    hops' listeners beside port 25."""
    postconf(container, BARE)
    containers.sh(container, "postconf -M " + " ".join(shlex.quote(entry) for entry in hop_services()))
    containers.sh(container, "postfix start >/dev/null 2>&1; (setsid smtp-sink -u nobody 127.0.0.1:2526 256 "
                             ">/dev/null 2>&1 &)")
    # One message through the hops first: each hop must hand it on (else the floor is wrong).
    containers.wait(lambda: containers.sh(container, "smtp-source -m 1 -f hops-check@example.net -t sink@example.net "
                                                     f"127.0.0.1:{HOPS_PORTS[0]} >/dev/null 2>&1 && echo sent",
                                          check=False) == "sent", 60, what="the first hop's listener")
    relays = [f"127.0.0.1[127.0.0.1]:{port}" for port in HOPS_PORTS[1:] + [2526]]
    containers.wait(lambda: all(f"relay={relay}," in containers.sh(container, "cat /var/log/postfix.log")
                                for relay in relays), 60, interval=0.5, what="a message through the six hops")


def maildir_users(container, users):
    table = "".join(f"{user} {user.split('@')[1]}/{user.split('@')[0]}/Maildir/\n" for user in users)
    containers.sh(container, "cat > /etc/postfix/vmailbox", stdin=table)


def copy_signatures(lab, container):
    """The lab gateway's ClamAV signatures and clamd.conf (same limits), then clamd."""
    gateway = lab["hosts"][lab["groups"]["gateway"][0]]["ansible_host"]
    containers.pipe(gateway, "tar -C /var/lib/clamav -cf - --exclude='*.tmp' --exclude=tmp* .", container,
                    "mkdir -p /var/lib/clamav && tar -C /var/lib/clamav -xf - && chown -R clamav:clamav /var/lib/clamav")
    containers.pipe(gateway, "cat /etc/clamav/clamd.conf", container, "cat > /etc/clamav/clamd.conf")
    containers.sh(container, "mkdir -p /run/clamav /var/log/clamav && chown clamav:clamav /run/clamav /var/log/clamav "
                             "&& sed -i -e 's/^LogSyslog .*/LogSyslog false/' /etc/clamav/clamd.conf && clamd")
    containers.wait(lambda: containers.sh(container, "test -S /run/clamav/clamd.ctl && echo ok", check=False) == "ok",
                    300, what="clamd start")
    return containers.sh(container, "ls /var/lib/clamav | tr '\\n' ' '")


def copy_resolver(lab, container):
    """The spamcheck host's unbound configuration (its local zones, its forwarder), on 127.0.0.1."""
    spam = lab["hosts"][lab["groups"]["spamcheck"][0]]["ansible_host"]
    containers.pipe(spam, "tar -C /etc/unbound -cf - unbound.conf.d", container, "tar -C /etc/unbound -xf -")
    containers.sh(container, "rm -f /etc/unbound/unbound.conf.d/root-auto-trust-anchor-file.conf; "
                             "unbound-checkconf >/dev/null && unbound && echo 'nameserver 127.0.0.1' > /etc/resolv.conf")


def prepare_maildir(container, users):
    containers.sh(container, f"mkdir -p /var/vmail && chown {VMAIL_UID}:{VMAIL_UID} /var/vmail")
    maildir_users(container, users)


AMAVIS_USER = """use strict;
$myhostname = 'bench-amavis.example.net';
$mydomain = 'example.net';
# No syslog daemon in the container.
$DO_SYSLOG = 0;
$LOGFILE = '/var/log/amavis.log';
@local_domains_acl = ( ".example.com", ".example.org" );
$max_servers = {servers};
# Checks on (Debian ships them bypassed), except for the recipient without contracts.
@bypass_virus_checks_maps = ( [ {bypass} ] );
@bypass_spam_checks_maps = ( [ {bypass} ] );
# Mark, deliver (the platform files spam into Junk, it does not refuse it).
$sa_tag_level_deflt = -999;
$final_spam_destiny = D_PASS;
$enable_dkim_verification = 0;
$log_level = 0;
$sa_debug = 0;
1;
"""

AMAVIS_MASTER = """
smtp-amavis unix - - n - {servers} smtp
  -o smtp_data_done_timeout=1200
  -o smtp_send_xforward_command=yes
  -o disable_dns_lookups=yes
  -o max_use=20
127.0.0.1:10025 inet n - n - - smtpd
  -o content_filter=
  -o local_recipient_maps=
  -o relay_recipient_maps=
  -o smtpd_restriction_classes=
  -o smtpd_client_restrictions=
  -o smtpd_helo_restrictions=
  -o smtpd_sender_restrictions=
  -o smtpd_recipient_restrictions=permit_mynetworks,reject
  -o mynetworks=127.0.0.0/8
  -o strict_rfc821_envelopes=yes
  -o receive_override_options=no_unknown_recipient_checks,no_header_body_checks,no_milters
  -o smtpd_authorized_xforward_hosts=127.0.0.0/8
"""


def start_amavis(lab, container, users, no_check, servers=4):
    """Postfix + amavisd-new + SpamAssassin + clamd, delivering to /var/vmail."""
    prepare_maildir(container, users)
    # clamd reads amavis' temporary files through the supplementary group (before clamd starts).
    containers.sh(container, "adduser clamav amavis >/dev/null && adduser amavis clamav >/dev/null && "
                             "mkdir -p /run/amavis && chown amavis:amavis /run/amavis && touch /var/log/amavis.log && "
                             "chown amavis:amavis /var/log/amavis.log && "
                             "echo bench-amavis.example.net > /etc/mailname && cat > /etc/amavis/conf.d/50-user",
                  stdin=AMAVIS_USER.replace("{servers}", str(servers)).replace(
                      "{bypass}", ", ".join(f"'{u}'" for u in no_check)))
    signatures = copy_signatures(lab, container)
    copy_resolver(lab, container)
    postconf(container, POSTFIX_MAILDIR + ["content_filter=smtp-amavis:[127.0.0.1]:10024"])
    containers.sh(container, "cat >> /etc/postfix/master.cf", stdin=AMAVIS_MASTER.replace("{servers}", str(servers)))
    containers.sh(container, "amavisd start >/var/log/amavis.start 2>&1 || cat /var/log/amavis.start >&2; "
                             "postfix start >/dev/null 2>&1")
    containers.wait(lambda: "220" in containers.sh(container, "printf 'QUIT\\r\\n' | timeout 5 python3 -c "
                    "'import socket;s=socket.create_connection((\"127.0.0.1\",10024));print(s.recv(100))'",
                    check=False), 180, interval=2, what="amavisd start")
    return {"signatures": signatures, "amavis_servers": servers}


RSPAMD_PROXY = f"""# bench: the milter for Postfix (self-scan), as mailcow/Mailu run it.
bind_socket = "127.0.0.1:{RSPAMD_MILTER_PORT}";
milter = yes;
timeout = 120s;
upstream "local" {{
  default = yes;
  self_scan = yes;
}}
"""

RSPAMD_SETTINGS = """# bench: the recipient without contracts is not scanned.
bench_no_check {
  priority = high;
  rcpt = [{rcpts}];
  want_spam = yes;
}
"""

# The verdict as headers on every message (mailcow and Mailu add these).
RSPAMD_HEADERS = """extended_spam_headers = true;
"""

# In the foreground, started in the background: daemonized, bookworm's clamav-milter (1.0)
# kept its parent waiting for the child's ready signal, and the setup with it.
CLAMAV_MILTER = f"""MilterSocket inet:{CLAMAV_MILTER_PORT}@127.0.0.1
Foreground yes
User clamav
FixStaleSocket true
PidFile /run/clamav/clamav-milter.pid
TemporaryDirectory /tmp
ClamdSocket unix:/var/run/clamav/clamd.ctl
OnClean Accept
OnInfected Reject
OnFail Defer
AddHeader Replace
LogSyslog false
LogClean Off
ReadTimeout 120
"""


def start_rspamd(lab, container, users, no_check):
    """One Postfix with the rspamd milter and clamav-milter, delivering to /var/vmail."""
    prepare_maildir(container, users)
    signatures = copy_signatures(lab, container)
    copy_resolver(lab, container)
    spam = lab["hosts"][lab["groups"]["spamcheck"][0]]["ansible_host"]
    containers.pipe(spam, "tar -C /etc/rspamd -cf - local.d override.d", container, "tar -C /etc/rspamd -xf -")
    containers.sh(container, "cat > /etc/rspamd/local.d/worker-proxy.inc", stdin=RSPAMD_PROXY)
    containers.sh(container, "cat > /etc/rspamd/local.d/settings.conf",
                  stdin=RSPAMD_SETTINGS.replace("{rcpts}", ", ".join(f'"{u}"' for u in no_check)))
    containers.sh(container, "cat > /etc/rspamd/local.d/milter_headers.conf", stdin=RSPAMD_HEADERS)
    containers.sh(container, "cat > /etc/clamav/clamav-milter.conf", stdin=CLAMAV_MILTER)
    containers.sh(container, "sed -i 's/^bind .*/bind 127.0.0.1/; s/^daemonize .*/daemonize yes/' /etc/redis/redis.conf;"
                             " mkdir -p /run/redis /run/rspamd /var/log/rspamd && chown redis:redis /run/redis && "
                             "chown _rspamd:_rspamd /run/rspamd /var/log/rspamd && "
                             "su -s /bin/sh redis -c 'redis-server /etc/redis/redis.conf' && "
                             "rspamadm configtest >/dev/null && rspamd -u _rspamd -g _rspamd && "
                             "{ clamav-milter </dev/null >/dev/null 2>&1 & }")
    postconf(container, POSTFIX_MAILDIR + [
        f"smtpd_milters=inet:127.0.0.1:{RSPAMD_MILTER_PORT},inet:127.0.0.1:{CLAMAV_MILTER_PORT}",
        "milter_default_action=tempfail", "milter_protocol=6",
        "milter_mail_macros=i {mail_addr} {client_addr} {client_name} {auth_authen}"])
    for port in (RSPAMD_MILTER_PORT, CLAMAV_MILTER_PORT):
        containers.wait(lambda: containers.sh(container, f"python3 -c 'import socket;socket.create_connection"
                                              f"((\"127.0.0.1\",{port}))' && echo ok", check=False) == "ok",
                        120, interval=1, what=f"milter on port {port}")
    containers.sh(container, "postfix start >/dev/null 2>&1")
    return {"signatures": signatures,
            "rspamd_version": containers.sh(container, "rspamd --version | head -1", check=False)}


def started(container, timeout=60):
    """Postfix answers on port 25 of `container`."""
    containers.wait(lambda: "220" in containers.sh(container, "python3 -c 'import socket;s=socket.create_connection"
                                                   "((\"127.0.0.1\",25));print(s.recv(100))'", check=False),
                    timeout, interval=1, what="postfix start")
    time.sleep(0.5)
