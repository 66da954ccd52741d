"""Private slapd processes for the tests: the shared helpers and the replicated directory.

replicated_directory() builds the platform's layout on free 127.0.0.1 ports: two
providers in multi-provider replication (serverID 1 and 2, syncprov, one olcSyncrepl to
the other) and a read-only replica consuming from both (rid 101 and 102, update referral
to the first provider). Each server can be stopped, wiped and started again, so the
tests can take the directory apart the way an outage or a reinstallation does. The
replication is the role's plain syncrepl, or delta-syncrepl for comparison.
"""

import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import ldap3

ROOT = Path(__file__).resolve().parent.parent.parent
SLAPD = "/usr/sbin/slapd"
SCHEMA = ROOT / "roles/ldap/files/ispmail.ldif"
BASE_DN = "dc=ispmail,dc=test"
ROOT_DN = f"cn=admin,{BASE_DN}"
ROOT_PW = "test-root-secret"
REPLICATOR_DN = f"cn=replicator,ou=services,{BASE_DN}"
REPLICATOR_PW = "test-replicator-secret"
DOMAIN_DN = f"ou=example.test,ou=domains,{BASE_DN}"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def slapadd(args, ldif):
    done = subprocess.run(["/usr/sbin/slapadd", *args], input=ldif, text=True, capture_output=True)
    if done.returncode:
        raise RuntimeError(f"slapadd {' '.join(args)} failed: {done.stderr}")


def slapcat(args):
    done = subprocess.run(["/usr/sbin/slapcat", *args], text=True, capture_output=True)
    if done.returncode:
        raise RuntimeError(f"slapcat {' '.join(args)} failed: {done.stderr}")
    return done.stdout


def wait_until_answering(proc, uri, log):
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"slapd exited with {proc.returncode}: {log.read_text()}")
        answer = subprocess.run(["ldapwhoami", "-x", "-H", uri], capture_output=True)
        if answer.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"slapd did not answer on {uri}: {log.read_text()}")


def peercred():
    """The SASL EXTERNAL identity of this process over ldapi (root's on a host)."""
    return f"gidNumber={os.getgid()}+uidNumber={os.getuid()},cn=peercred,cn=external,cn=auth"


# cn=config up to the main database's limits: what every private slapd has. Filled in
# with str.format: modules (olcModuleLoad lines), max_size, global_settings (lines or "").
CONFIG_HEAD_LDIF = """\
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {tmp}/slapd.pid
{global_settings}
dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
{modules}
dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file:///etc/ldap/schema/core.ldif

include: file:///etc/ldap/schema/cosine.ldif

include: file:///etc/ldap/schema/inetorgperson.ldif

include: file://{schema}

dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by dn.exact={peercred} manage by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {base_dn}
olcDbDirectory: {tmp}/db
olcDbMaxSize: {max_size}
olcRootDN: {root_dn}
olcRootPW: {root_pw}
"""

MEMBER_CONFIG_LDIF = CONFIG_HEAD_LDIF + """\
olcDbIndex: objectClass eq
olcDbIndex: entryCSN,entryUUID eq
olcLimits: {{0}}dn.exact="{replicator_dn}" size=unlimited time=unlimited
olcAccess: {{0}}to attrs=userPassword by dn.exact="{peercred}" manage by dn.exact="{replicator_dn}" read
  by self =xw by anonymous auth by * none
olcAccess: {{1}}to * by dn.exact="{peercred}" manage by dn.exact="{replicator_dn}" read by * none
{replication}"""

SYNCPROV_LDIF = """
dn: olcOverlay=syncprov,olcDatabase={1}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcSyncProvConfig
olcOverlay: syncprov
olcSpCheckpoint: 100 10
olcSpSessionlog: 10000
"""

# Delta-syncrepl: the provider logs each write in cn=accesslog and replicates the log,
# so a peer replays the change itself rather than taking over the whole entry.
ACCESSLOG_LDIF = """
dn: olcDatabase={{2}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{2}}mdb
olcSuffix: cn=accesslog
olcDbDirectory: {tmp}/accesslog
olcDbMaxSize: 104857600
olcDbIndex: default eq
olcDbIndex: entryCSN,objectClass,reqEnd,reqResult,reqStart,reqDN
olcLimits: {{0}}dn.exact="{replicator_dn}" size=unlimited time=unlimited
olcAccess: {{0}}to * by dn.exact="{replicator_dn}" read by * none

dn: olcOverlay=syncprov,olcDatabase={{2}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcSyncProvConfig
olcOverlay: syncprov
olcSpNoPresent: TRUE
olcSpReloadHint: TRUE

dn: olcOverlay={{1}}accesslog,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcAccessLogConfig
olcOverlay: {{1}}accesslog
olcAccessLogDB: cn=accesslog
olcAccessLogOps: writes
olcAccessLogSuccess: TRUE
olcAccessLogPurge: 07+00:00 01+00:00
"""
DELTA_SYNCREPL = 'syncdata=accesslog logbase="cn=accesslog" logfilter="(&(objectClass=auditWriteObject)(reqResult=0))"'

# The tree a provider starts from: what the role creates on the first provider.
TREE_LDIF = f"""\
dn: {BASE_DN}
objectClass: dcObject
objectClass: organization
dc: ispmail
o: ISP mail test

dn: ou=services,{BASE_DN}
objectClass: organizationalUnit
ou: services

dn: {REPLICATOR_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: replicator
userPassword: {REPLICATOR_PW}

dn: ou=domains,{BASE_DN}
objectClass: organizationalUnit
ou: domains

dn: {DOMAIN_DN}
objectClass: organizationalUnit
objectClass: ispmailDomain
ou: example.test
ispmailDomainName: example.test
"""

# Enough users that refilling an empty replica takes a moment the tests can watch.
SEED_USERS = 300


def users_ldif(count):
    return "".join(f"""
dn: mail=user{number}@example.test,{DOMAIN_DN}
objectClass: inetOrgPerson
objectClass: ispmailUser
mail: user{number}@example.test
cn: user{number}
sn: user{number}
ispmailEnabled: TRUE
""" for number in range(count))


def syncrepl(rid, uri, index=0, delta=False):
    """An olcSyncrepl value as the role writes it, minus StartTLS (the tests speak plain LDAP)."""
    return (f'{{{index}}}rid={rid:03d} provider={uri} bindmethod=simple binddn="{REPLICATOR_DN}" '
            f'credentials={REPLICATOR_PW} searchbase="{BASE_DN}" type=refreshAndPersist '
            'retry="5 10 60 +" network-timeout=5 timeout=4 keepalive=60:5:10' + (f" {DELTA_SYNCREPL}" if delta else ""))


class Slapd:
    """One private slapd in its own directory; stop() and start() keep its data and port."""

    def __init__(self, tmp, name):
        self.name = name
        self.path = tmp / name
        self.port = free_port()
        self.uri = f"ldap://127.0.0.1:{self.port}/"
        self.ldapi_uri = "ldapi://" + quote(str(self.path / "ldapi"), safe="")
        self.proc = None
        for folder in ("slapd.d", "db"):
            (self.path / folder).mkdir(parents=True)

    def configure(self, server_id=None, syncrepls=(), multi_provider=False, syncprov=True, update_ref=None,
                  accesslog=False, tls=None):
        """Write cn=config with slapadd; the syncrepl settings as in the role's tasks.

        tls: (CA certificate, certificate, key) files for StartTLS.
        """
        global_settings = f"olcServerID: {server_id}\n" if server_id else ""
        if tls:
            global_settings += "".join(f"{name}: {path}\n" for name, path in zip(
                ("olcTLSCACertificateFile", "olcTLSCertificateFile", "olcTLSCertificateKeyFile"), tls))
        replication = "".join(f"olcSyncrepl: {value}\n" for value in syncrepls)
        if multi_provider:
            replication += "olcMultiProvider: TRUE\n"
        if update_ref:
            replication += f"olcUpdateRef: {update_ref}\n"
        config = MEMBER_CONFIG_LDIF.format(
            tmp=self.path, global_settings=global_settings, schema=SCHEMA, max_size=104857600,
            modules="olcModuleLoad: back_mdb\nolcModuleLoad: syncprov\nolcModuleLoad: accesslog\n",
            peercred=peercred(), base_dn=BASE_DN, root_dn=ROOT_DN, root_pw=ROOT_PW, replicator_dn=REPLICATOR_DN,
            replication=replication)
        if syncprov:
            config += SYNCPROV_LDIF
        if accesslog:
            (self.path / "accesslog").mkdir()
            config += ACCESSLOG_LDIF.format(tmp=self.path, replicator_dn=REPLICATOR_DN)
        slapadd(["-n0", "-F", str(self.path / "slapd.d")], config)

    def load(self, ldif, server_id=0, write_context=True):
        """slapadd entries; write_context sets the contextCSN from them (-w), as when seeding a provider."""
        slapadd(["-F", str(self.path / "slapd.d"), "-b", BASE_DN, "-S", str(server_id)]
                + (["-w"] if write_context else []), ldif)

    def dump(self):
        return slapcat(["-F", str(self.path / "slapd.d"), "-b", BASE_DN])

    def start(self):
        log = self.path / "slapd.log"
        with open(log, "a") as log_file:
            self.proc = subprocess.Popen([SLAPD, "-d", "0", "-F", str(self.path / "slapd.d"),
                                          "-h", f"{self.uri} {self.ldapi_uri}"],
                                         stdout=log_file, stderr=subprocess.STDOUT)
        wait_until_answering(self.proc, self.uri, log)

    def stop(self):
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def wipe(self):
        """Remove the database files, as a reinstalled host has them (slapd must be stopped)."""
        assert not self.running, f"{self.name} must be stopped before its database is wiped"
        for item in (self.path / "db").iterdir():
            item.unlink()

    def connect(self, user=ROOT_DN, password=ROOT_PW):
        return ldap3.Connection(self.uri.rstrip("/"), user, password, auto_bind=True, receive_timeout=5)

    def connect_config(self):
        """Root's way into cn=config: SASL EXTERNAL over the private ldapi socket."""
        server = ldap3.Server(self.ldapi_uri, get_info=ldap3.NONE)
        return ldap3.Connection(server, authentication=ldap3.SASL, sasl_mechanism=ldap3.EXTERNAL,
                                sasl_credentials="", auto_bind=True)

    def modify_database_config(self, changes):
        """An ldap3 modify of the mdb database's cn=config entry, over ldapi as root."""
        conn = self.connect_config()
        try:
            conn.modify("olcDatabase={1}mdb,cn=config", changes)
            assert conn.result["result"] == 0, conn.result
        finally:
            conn.unbind()

    def entry(self, dn, attributes=("*", "+")):
        """The entry's attributes as {lower-case name: sorted str values}, or None."""
        conn = self.connect()
        try:
            conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=list(attributes))
            for item in conn.response:
                if item["type"] == "searchResEntry":
                    return {name.lower(): sorted(value.decode() for value in values)
                            for name, values in item["raw_attributes"].items()}
            return None
        finally:
            conn.unbind()


@contextmanager
def replicated_directory(tmp, delta=False, users=SEED_USERS):
    """Two providers and a consumer of both, running; yields their Slapd objects.

    delta: delta-syncrepl (an accesslog database on each provider) instead of the role's
    plain syncrepl. users: how many users the first provider starts with.
    """
    provider1, provider2, consumer = Slapd(tmp, "provider1"), Slapd(tmp, "provider2"), Slapd(tmp, "consumer")
    servers = (provider1, provider2, consumer)
    try:
        for server_id, provider in enumerate((provider1, provider2), 1):
            provider.configure(server_id=server_id, accesslog=delta)
        # The second provider starts as a copy of the first, the documented way to add one.
        provider1.load(TREE_LDIF + users_ldif(users), server_id=1)
        provider2.load(provider1.dump())
        provider1.start()
        provider2.start()
        # Replication goes in once both answer, as the role adds it to running servers,
        # so neither starts with a failed connection and a retry wait.
        for provider, peer in ((provider1, provider2), (provider2, provider1)):
            provider.modify_database_config({"olcSyncrepl": [(ldap3.MODIFY_ADD, [syncrepl(1, peer.uri, delta=delta)])],
                                             "olcMultiProvider": [(ldap3.MODIFY_REPLACE, ["TRUE"])]})
        consumer.configure(syncrepls=[syncrepl(101, provider1.uri, delta=delta),
                                      syncrepl(102, provider2.uri, index=1, delta=delta)],
                           syncprov=False, update_ref=provider1.uri)
        consumer.start()
        yield SimpleNamespace(provider1=provider1, provider2=provider2, consumer=consumer, servers=servers)
    finally:
        # All at once: a slapd may take seconds to shut down its syncrepl sessions.
        for server in servers:
            if server.running:
                server.proc.terminate()
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
