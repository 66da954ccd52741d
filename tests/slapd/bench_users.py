"""Benchmark of the bulk form of mail_user against a private slapd (not a pytest test).

    .venv/bin/python tests/slapd/bench_users.py [USERS]

Starts the same slapd as the integration tests, creates the domains, then times
1. creating USERS users (default 5000) with passwords in one mail_user run,
2. re-applying the same list (must report changed=false),
3. the same re-apply through `ansible-playbook` (AnsiballZ, module transfer and all).
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import conftest  # noqa: E402,F401  (makes library/ and ansible.module_utils.ispmail_ldap importable)
from module_runner import call  # noqa: E402

import mail_domain  # noqa: E402
import mail_user  # noqa: E402

DOMAINS = [f"bench{n}.test" for n in range(20)]
MAILBOX_HOSTS = ["mbox01", "mbox02", "mbox03", "mbox04"]


def run_in_process(module, args):
    result = call(module, args)
    if result.get("failed"):
        raise SystemExit(result["msg"])
    return result


def timed(label, function):
    start = time.monotonic()
    result = function()
    counts = {key: value for key, value in result["summary"].items() if key != "changed_addresses"}
    print(f"{label}: {time.monotonic() - start:.1f} s, changed={result['changed']}, {counts}")
    return result


def run_playbook(tmp, connection, users):
    (tmp / "users.json").write_text(json.dumps({"bench_users": users}))
    (tmp / "play.yml").write_text(json.dumps([{
        "hosts": "localhost", "gather_facts": False,
        "tasks": [{"mail_user": dict(connection, mailbox_hosts=MAILBOX_HOSTS, users="{{ bench_users }}")}]}]))
    env = dict(os.environ, ANSIBLE_LIBRARY=str(conftest.ROOT / "library"),
               ANSIBLE_MODULE_UTILS=str(conftest.ROOT / "module_utils"), ANSIBLE_STDOUT_CALLBACK="json",
               ANSIBLE_CONFIG=str(conftest.ROOT / "ansible.cfg"), ANSIBLE_LOCALHOST_WARNING="0")
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                           "-e", f"ansible_python_interpreter={sys.executable}", "-e", f"@{tmp / 'users.json'}",
                           str(tmp / "play.yml")], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    task = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    return task


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    users = [{"address": f"user{n:05d}@{DOMAINS[n % len(DOMAINS)]}", "password": f"password-{n}", "quota": "1G",
              "keyword_filters": [{"header": "Subject", "contains": "[SPAM]", "action": "folder", "folder": "Junk"}]}
             for n in range(count)]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "slapd").mkdir()
        with conftest.private_slapd(tmp / "slapd") as slapd:
            # The production path: SASL EXTERNAL over ldapi, bound by olcLimits rather than rootDN.
            connection = dict(server_uri=slapd.ldapi_uri, base_dn=slapd.base_dn)
            run_in_process(mail_domain, dict(connection, domains=[{"name": name} for name in DOMAINS]))
            args = dict(connection, mailbox_hosts=MAILBOX_HOSTS, users=users)
            print(f"{count} users in {len(DOMAINS)} domains")
            timed("create (in-process main())", lambda: run_in_process(mail_user, args))
            timed("re-apply unchanged (in-process main())", lambda: run_in_process(mail_user, args))
            timed("re-apply unchanged (ansible-playbook)", lambda: run_playbook(tmp, connection, users))


if __name__ == "__main__":
    main()
