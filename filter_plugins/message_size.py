"""The platform's one message size limit, and every limit derived from it.

platform_message_size_limit is what a client may send: Postfix's message_size_limit
(bytes of the queue file, LF line ends) on the instances that take mail from clients.
Everything behind them must take at least as much, or a message accepted at the front
is deferred or bounced further in:

  relay           internal Postfix hops (route, vscan, mbox, std, scan, edge's way out):
                  every hop adds its Received header (and the milters theirs), so a
                  message just under the limit at the front would not fit the next hop;
                  HOP_HEADROOM covers far more headers than the path adds.
  milter_stream   what a milter hands on (clamd's stream, rspamd's request): the message
                  with CRLF line ends. A message of empty lines doubles, so twice relay
                  never refuses what Postfix accepted (base64 lines grow by 1/77).
  clamd_scan      clamd's MaxScanSize (all data scanned in one stream, archive members
                  included): twice the stream, never below Debian's 100M.
  mailbox         Dovecot's quota_max_mail_size (LMTP deliveries and IMAP APPEND): the
                  milter stream bound, so a delivery Postfix accepted always fits.
  webmail_message Roundcube's max_message_size (the composed message, encoded): the
                  limit less WEBMAIL_ALLOWANCE for headers and the text.
  webmail_upload  PHP's upload_max_filesize (raw bytes of attachments): base64 turns N
                  bytes into N * 4/3 plus a CRLF per 76 characters, about 1.37 N.
  webmail_post    PHP's post_max_size and nginx's client_max_body_size: one upload plus
                  the form around it.
"""

from ansible.errors import AnsibleFilterError

MIB = 1024 * 1024
HOP_HEADROOM = MIB
WEBMAIL_ALLOWANCE = 64 * 1024
BASE64_GROWTH = 1.37
FORM_ALLOWANCE = MIB
DEBIAN_CLAMD_MAX_SCAN_SIZE = 100 * MIB


def message_size_limits(limit):
    """All derived limits in bytes (see the module docstring) for a client-side limit."""
    try:
        limit = int(limit)
    except (TypeError, ValueError):
        raise AnsibleFilterError(f"platform_message_size_limit must be a number of bytes, not {limit!r}") from None
    if limit < 2 * MIB:
        raise AnsibleFilterError(f"platform_message_size_limit is {limit} bytes; at least {2 * MIB} (2 MiB) "
                                 "leaves webmail room for attachments")
    relay = limit + HOP_HEADROOM
    stream = 2 * relay
    upload = int((limit - WEBMAIL_ALLOWANCE) / BASE64_GROWTH)
    return {
        "smtp": limit,
        "relay": relay,
        "milter_stream": stream,
        "clamd_scan": max(DEBIAN_CLAMD_MAX_SCAN_SIZE, 2 * stream),
        "mailbox": stream,
        "webmail_message": limit - WEBMAIL_ALLOWANCE,
        "webmail_upload": upload,
        "webmail_post": upload + FORM_ALLOWANCE,
    }


class FilterModule:
    def filters(self):
        return {"message_size_limits": message_size_limits}
