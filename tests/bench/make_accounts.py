#!/usr/bin/env python3
"""Write an accounts file for playbooks/users.yml with N users in the lab's domains.

    tests/bench/make_accounts.py 5000 > /tmp/accounts.yml
    time ansible-playbook playbooks/users.yml -e @/tmp/accounts.yml   # create
    time ansible-playbook playbooks/users.yml -e @/tmp/accounts.yml   # unchanged: changed=0
"""

import json
import sys

DOMAINS = ["example.com", "example.org"]


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    users = [{
        "address": f"bench{n:05d}@{DOMAINS[n % len(DOMAINS)]}",
        "password": f"bench-password-{n}",
        "quota": "500M",
        "spam_check": n % 3 == 0,
        "keyword_filters": [{"header": "Subject", "contains": f"topic{n % 7}", "action": "tag"}],
    } for n in range(count)]
    # JSON is YAML; it keeps a 5,000-user file fast to load.
    json.dump({"mail_domains": [{"name": d} for d in DOMAINS], "mail_users": users}, sys.stdout)


if __name__ == "__main__":
    main()
