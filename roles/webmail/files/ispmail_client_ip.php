<?php
/**
 * Tell the IMAP relay who the user really is (managed by Ansible, role webmail).
 *
 * Every webmail login reaches the gateways from the webmail host. Sending the browser's
 * address (nginx sets REMOTE_ADDR from the load balancer's PROXY header) in the IMAP ID
 * command lets the relay, which trusts the webmail hosts for it, count failed logins
 * against the guesser's address rather than against the webmail host's. Roundcube 1.5+
 * sends `ident` only after LOGIN; `preauth_ident` goes before it, which is when it counts.
 */
class ispmail_client_ip extends rcube_plugin
{
    public function init()
    {
        $this->add_hook('storage_connect', [$this, 'add_client_ip']);
    }

    public function add_client_ip($args)
    {
        $ident = ['x-originating-ip' => rcube_utils::remote_addr()];
        $args['preauth_ident'] = array_merge($args['preauth_ident'] ?? [], $ident);
        return $args;
    }
}
