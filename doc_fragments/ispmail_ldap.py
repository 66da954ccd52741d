"""Documentation shared by the directory modules (mail_user, mail_domain)."""


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  server_uri:
    description:
      - LDAP server. V(ldapi:///) is Debian's socket C(/var/run/slapd/ldapi); other sockets as
        C(ldapi://%2Fpath%2Fto%2Fsocket). Writes must go to the provider, not a replica.
    type: str
    default: ldapi:///
  bind_dn:
    description:
      - DN for a simple bind. Without it the module binds with SASL EXTERNAL, which works only
        over C(ldapi://) (as root on the provider).
    type: str
  bind_pw:
    description: Password of O(bind_dn).
    type: str
  base_dn:
    description: Base DN of the platform's tree, for example V(dc=ispmail,dc=test).
    type: str
    required: true
  start_tls:
    description: Upgrade an C(ldap://) connection with StartTLS.
    type: bool
    default: false
  ca_file:
    description: CA certificates to verify the server with (C(ldaps://) or StartTLS).
    type: path
  validate_certs:
    description: Verify the server certificate.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - The bind identity needs C(manage) or C(write) access below C(ou=domains,<base_dn>) and, for
    the bulk form, no size limit (C(olcLimits ... size=unlimited)).
"""
