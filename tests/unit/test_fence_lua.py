"""The mailbox servers' take-over fence (roles/mailbox/templates/ispmail-fence.lua.j2), run
by a real Lua 5.4 (Dovecot 2.3 on Debian 12 links 5.4) with Dovecot's userdb interface
stood in: which users a server serves for which held file."""

import shutil
import subprocess
import time
from pathlib import Path

import jinja2
import pytest

TEMPLATE = Path(__file__).resolve().parent.parent.parent / "roles" / "mailbox" / "templates" / "ispmail-fence.lua.j2"
LUA = shutil.which("lua5.4")
BASE = "dc=ispmail,dc=test"

# Dovecot's constants and the request object: var_expand answers the previous userdb's fields.
HARNESS = """
dovecot = {auth = {USERDB_RESULT_OK = 1, USERDB_RESULT_INTERNAL_FAILURE = -1}}
local fields = {["%{userdb:ispmail_slot}"] = arg[2], ["%{userdb:ispmail_host}"] = arg[3]}
local req = {var_expand = function(self, text) return fields[text] or "" end}
dofile(arg[1])
local result, detail = auth_userdb_lookup(req)
print(result, type(detail) == "string" and detail or "")
"""


@pytest.fixture
def fence(tmp_path):
    if LUA is None:
        pytest.skip("lua5.4 is not installed (make host-deps)")
    held = tmp_path / "slots-held"
    script = tmp_path / "ispmail-fence.lua"
    script.write_text(jinja2.Template(TEMPLATE.read_text()).render(
        ansible_managed="test", platform_mailbox_held_slots_file=str(held), mailbox_host_name="MBox1",
        mailbox_ldap_base_dn=BASE))
    harness = tmp_path / "harness.lua"
    harness.write_text(HARNESS)

    def lookup(slot="", host="", expires_in=30, slots=(7, 12), file=True):
        if file:
            held.write_text(f"expires {int(time.time() + expires_in)}\n" + "".join(f"{n}\n" for n in slots))
        elif held.exists():
            held.unlink()
        out = subprocess.run([LUA, str(harness), str(script), slot, host], capture_output=True, text=True,
                             check=True).stdout
        result, _, detail = out.rstrip("\n").partition("\t")
        return int(result), detail
    return lookup


def test_a_slot_held_here_is_served(fence):
    assert fence(slot=f"cn=7,ou=slots,{BASE}")[0] == 1
    assert fence(slot=f"CN = 12 , OU=Slots, DC=ispmail, DC=test")[0] == 1  # as LDAP may spell it


@pytest.mark.parametrize("case", [
    dict(slot=f"cn=8,ou=slots,{BASE}"),                        # held by another server
    dict(slot=f"cn=7,ou=slots,{BASE}", expires_in=-1),         # the lease ran out
    dict(slot=f"cn=7,ou=slots,{BASE}", expires_in=0),          # ... this very second
    dict(slot=f"cn=7,ou=slots,{BASE}", file=False),            # the agent never wrote it
    dict(slot=f"cn=7,ou=slots,dc=other,dc=test"),              # another map
    dict(slot=f"cn=7,ou=elsewhere,{BASE}"),
    dict(slot=f"cn=x7,ou=slots,{BASE}"),
    dict(slot=f"cn=7,ou=slots,{BASE}", host="mbox1", slots=()),  # a slot wins over the pin
], ids=["other-holder", "expired", "expires-now", "no-file", "other-base", "not-the-map", "not-a-number",
        "slot-over-pin"])
def test_anything_else_is_refused_with_a_temporary_failure(fence, case):
    result, detail = fence(**case)
    assert result == -1 and "not held by mbox1" in detail


def test_a_pinned_user_is_served_only_by_its_own_server(fence):
    assert fence(host="MBOX1", file=False)[0] == 1
    result, detail = fence(host="mbox2")
    assert result == -1 and detail == "pinned to mbox2, not mbox1"
