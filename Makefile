# The two commands: `make lab` builds and deploys the lab, `make test` runs every check.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
# slapd, haproxy and memcached are for the unit tests, which run private instances of them
# (haproxy and keepalived also check the load balancer's rendered configuration);
# chromium, its driver and certutil for the webmail's browser tests; testssl.sh checks TLS;
# rsync for the unit tests of the qmail migration's copy tool; prometheus for promtool
# (the alert rules' unit tests), its daemons (and node-exporter, a recommend) stay off.
# lua5.4 runs the mailbox servers' take-over fence (a Dovecot Lua userdb) in its unit tests;
# python3-apt lets apt_present's unit tests hand over to ansible.builtin.apt on this host.
HOST_PACKAGES := podman runc debootstrap iptables uidmap python3-venv slapd ldap-utils haproxy keepalived rsync \
	memcached testssl.sh chromium chromium-driver libnss3-tools prometheus lua5.4 python3-apt
export CONTAINERS_CONF := $(CURDIR)/lab/containers.conf
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(BIN):$(PATH)

# CI's lab: its own names and subnet, nothing published, so it never meets `make lab`'s.
CI_LAB_ENV := ISPMAIL_LAB=ispmail-ci ISPMAIL_LAB_SUBNET=10.214.0.0/24 ISPMAIL_LAB_PUBLISH=no

.PHONY: help host-deps venv lab lab-info lab-destroy test lint unit molecule bench resilience docs clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

host-deps: ## Install the host packages the lab needs (Debian 12, as root)
	@missing=""; for p in $(HOST_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  for unit in haproxy keepalived memcached prometheus; do case "$$missing" in *$$unit*) systemctl disable --now $$unit.service >/dev/null 2>&1 || true;; esac; done; \
	  case "$$missing" in *prometheus*) systemctl disable --now prometheus-node-exporter.service >/dev/null 2>&1 || true;; esac; \
	fi

$(BIN)/.installed: requirements.txt | host-deps
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

venv: $(BIN)/.installed ## Create the Python virtualenv with the pinned tools

lab: venv ## Build the lab containers and deploy the whole platform into them
	ansible-playbook playbooks/lab/create.yml
	ansible-playbook playbooks/site.yml
	ansible-playbook playbooks/users.yml
	ansible-playbook playbooks/lab/internet.yml
	ansible-playbook playbooks/lab/legacy.yml
	@$(MAKE) --no-print-directory lab-info

lab-info: venv ## Print the lab's endpoints on 127.0.0.1 as JSON
	@python3 lab/info.py

lab-destroy: venv ## Remove the lab's containers, network and volumes
	ansible-playbook playbooks/lab/destroy.yml

# lint and unit side by side (unit mostly waits on its private servers; ansible-lint at a
# lower priority), then the lab scenario: about a minute less than one after the other.
test: venv ## Lint, unit tests and the molecule scenario
	$(MAKE) --no-print-directory -j2 --output-sync=target lint unit
	$(MAKE) --no-print-directory molecule

lint: venv ## yamllint, ansible-lint (production profile), both inventories parse, role docs current
	yamllint --strict .
	nice -n 10 ansible-lint --profile production
	for inv in inventories/*/; do ansible-inventory -i $$inv --graph >/dev/null; done
	python3 tests/role_docs.py --check

unit: venv ## Unit tests; the LDAP modules against a private slapd, lb_pool_ratio against a private HAProxy, the resilience run's pure parts
	pytest -q tests/unit tests/slapd tests/haproxy tests/resilience

molecule: venv ## Create CI's own lab from the lab inventory, converge twice, verify, destroy
	rm -f .cache/molecule-verify.xml
	env $(CI_LAB_ENV) molecule test || { python3 tests/failed_tests.py .cache/molecule-verify.xml; exit 1; }

# Longer runs: make bench BENCH_ARGS="--rounds 5 --round-seconds 60 --load-shares 0.5,0.8,0.95"
# (tests/bench/side_by_side --help lists the options).
BENCH_ARGS ?=
bench: venv ## The platform against bare Postfix and the peer designs in one run (running lab, ~15 min)
	python3 tests/bench/side_by_side $(BENCH_ARGS)

# Faults under client load: make resilience RESILIENCE_ARGS="--short" (about 5 min), or
# RESILIENCE_ARGS="--faults rspamd,gateway-kill --fault-seconds 120" (tests/resilience --help).
RESILIENCE_ARGS ?=
resilience: venv ## Inject faults into the running lab under load, check every message (~25 min; docs/resilience.md)
	python3 tests/resilience $(RESILIENCE_ARGS)

docs: venv ## Regenerate the role variable tables in docs/roles from meta/argument_specs.yml
	python3 tests/role_docs.py --write

clean: ## Remove the virtualenv and caches (not the lab)
	rm -rf $(VENV) .cache
