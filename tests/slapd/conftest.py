"""A private slapd for the mail_user/mail_domain integration tests.

The session fixture builds cn=config with slapadd (core, cosine, inetOrgPerson and the
project schema), one mdb database for dc=ispmail,dc=test and a second one that behaves as
a read-only replica (syncrepl consumer with an update referral), then runs slapd in the
foreground on a free 127.0.0.1 port and on a private ldapi socket. The helpers for
running slapd, and the replicated layout, are in slapd_servers.py.
"""

import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "library"))
# The modules import their shared code as ansible.module_utils.ispmail_ldap, as on a target.
import ansible.module_utils  # noqa: E402

if str(ROOT / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(ROOT / "module_utils"))

sys.path.insert(0, str(ROOT / "tests"))
from module_runner import module_runner  # noqa: E402
from slapd_servers import BASE_DN, CONFIG_HEAD_LDIF, SLAPD, free_port, slapadd, wait_until_answering  # noqa: E402

REPLICA_BASE_DN = "dc=replica,dc=test"
ROOT_DN = f"cn=admin,{BASE_DN}"
ROOT_PW = "test-root-secret"
PROVIDER_REFERRAL = "ldap://provider.invalid/"

CONFIG_LDIF = CONFIG_HEAD_LDIF + """\
olcDbIndex: objectClass eq
olcDbIndex: mail eq
olcDbIndex: ispmailDomainName eq
olcLimits: {{0}}dn.exact="{peercred}" size=unlimited time=unlimited
olcAccess: {{0}}to * by dn.exact={peercred} manage by * break
olcAccess: {{1}}to attrs=userPassword by self write by anonymous auth by * none
olcAccess: {{2}}to * by users read by * none

dn: olcDatabase={{2}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{2}}mdb
olcSuffix: {replica_base_dn}
olcDbDirectory: {tmp}/replica
olcDbMaxSize: 104857600
olcRootDN: cn=admin,{replica_base_dn}
olcSyncrepl: rid=001 provider=ldap://127.0.0.1:1/ bindmethod=simple binddn="cn=nobody"
  credentials=x searchbase="{replica_base_dn}" type=refreshAndPersist retry="60 +"
olcUpdateRef: {referral}
olcAccess: {{0}}to * by dn.exact={peercred} manage by * read
"""

BASE_LDIF = """\
dn: {base_dn}
objectClass: dcObject
objectClass: organization
dc: {dc}
o: ISP mail test

dn: ou=domains,{base_dn}
objectClass: organizationalUnit
ou: domains
"""

REPLICA_DOMAIN_LDIF = """
dn: ou=replica.test,ou=domains,{base_dn}
objectClass: organizationalUnit
objectClass: ispmailDomain
ou: replica.test
ispmailDomainName: replica.test
"""


@contextmanager
def private_slapd(tmp):
    """Build and run a slapd in the empty directory tmp; yields its URIs and credentials."""
    for folder in ("slapd.d", "db", "replica"):
        (tmp / folder).mkdir()
    peercred = f"gidNumber={os.getgid()}+uidNumber={os.getuid()},cn=peercred,cn=external,cn=auth"
    config = CONFIG_LDIF.format(
        global_settings="", modules="olcModuleLoad: back_mdb\n", max_size=1073741824, tmp=tmp, schema=ROOT / "roles/ldap/files/ispmail.ldif", peercred=peercred, base_dn=BASE_DN,
        replica_base_dn=REPLICA_BASE_DN, root_dn=ROOT_DN, root_pw=ROOT_PW, referral=PROVIDER_REFERRAL)
    slapadd(["-n0", "-F", str(tmp / "slapd.d")], config)
    slapadd(["-F", str(tmp / "slapd.d"), "-b", BASE_DN], BASE_LDIF.format(base_dn=BASE_DN, dc="ispmail"))
    slapadd(["-F", str(tmp / "slapd.d"), "-b", REPLICA_BASE_DN],
            BASE_LDIF.format(base_dn=REPLICA_BASE_DN, dc="replica") + REPLICA_DOMAIN_LDIF.format(base_dn=REPLICA_BASE_DN))

    port = free_port()
    ldap_uri = f"ldap://127.0.0.1:{port}/"
    ldapi_uri = "ldapi://" + quote(str(tmp / "ldapi"), safe="")
    log = tmp / "slapd.log"
    with open(log, "w") as log_file:
        proc = subprocess.Popen([SLAPD, "-d", "0", "-F", str(tmp / "slapd.d"), "-h", f"{ldap_uri} {ldapi_uri}"],
                                stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_until_answering(proc, ldap_uri, log)
        yield SimpleNamespace(ldap_uri=ldap_uri, ldapi_uri=ldapi_uri, base_dn=BASE_DN,
                              replica_base_dn=REPLICA_BASE_DN, root_dn=ROOT_DN, root_pw=ROOT_PW,
                              referral=PROVIDER_REFERRAL, path=tmp)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def private_slapd_in():
    """private_slapd itself, for tests that build their own server (a test module cannot import
    conftest by name: pytest tests/haproxy tests/slapd has two of them)."""
    if not os.path.exists(SLAPD):
        pytest.skip("slapd is not installed (apt-get install slapd ldap-utils)")
    return private_slapd


@pytest.fixture(scope="session")
def slapd(tmp_path_factory):
    if not os.path.exists(SLAPD):
        pytest.skip("slapd is not installed (apt-get install slapd ldap-utils)")
    tmp = tmp_path_factory.mktemp("slapd")
    with private_slapd(tmp) as server:
        yield server
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def run_module(monkeypatch):
    """Call a module's main() in-process: run_module(mail_user, check=False, diff=False, **args)."""
    return module_runner(monkeypatch)


@pytest.fixture
def ansible_adhoc(slapd):
    """Run `ansible localhost -m <module>` against the test slapd; returns (rc, result)."""
    env = dict(os.environ, ANSIBLE_LIBRARY=str(ROOT / "library"), ANSIBLE_MODULE_UTILS=str(ROOT / "module_utils"),
               ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    ansible = Path(sys.executable).parent / "ansible"

    def run(module, args, *flags):
        proc = subprocess.run([str(ansible), "localhost", "-i", "localhost,", "-c", "local", "-m", module,
                               "-a", json.dumps(args),
                               "-e", f"ansible_python_interpreter={sys.executable}", *flags], capture_output=True, text=True, env=env, cwd=ROOT)
        output = json.loads(proc.stdout)
        return proc.returncode, output["plays"][0]["tasks"][0]["hosts"]["localhost"]

    return run
