# Operator rules, run before the user's own script (managed by Ansible, role mailbox).
require ["vnd.dovecot.environment", "vnd.dovecot.execute", "variables", "fileinto", "mailbox",
         "editheader"];

# The user's keyword filters from LDAP. The userdb field is set when the user has any;
# the helper reads them all, checks the headers and prints discard, folder:<name>, tag,
# or nothing.
if not string :is "${env.vnd.dovecot.config.ispmail_keyword_filters}" "" {
  if execute :pipe :output "verdict" "ispmail-keyword-filter" ["${env.vnd.dovecot.username}"] {
    if string :is "${verdict}" "discard" {
      discard;
      stop;
    }
    if string :matches "${verdict}" "folder:*" {
      fileinto :create "${1}";
      stop;
    }
    if string :is "${verdict}" "tag" {
      addheader "X-Keyword-Filter" "matched";
    }
  }
}

# Marked as spam by the spam check (only for users with the contract): Junk folder.
if header :is "X-Spam" "Yes" {
  fileinto :create "${env.vnd.dovecot.config.ispmail_junk_folder}";
  stop;
}
