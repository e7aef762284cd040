#!/usr/bin/env bash
# Create and start a private Postfix instance for benchmarks, entirely under $1.
# Usage: setup.sh WORKDIR MX_PORT TLS_PORT CERT KEY
# It never touches /etc/postfix or port 25: every path is under WORKDIR, it listens on
# 127.0.0.1 only, and it delivers bob@bench.test to WORKDIR/mail/bench.test/bob/Maildir/ the
# way mailwarden does (virtual(8), Maildir). The queue file and the Maildir file are fsynced
# before the 250 and before delivery completes (Postfix defaults).
set -euo pipefail
W=$(realpath -m "$1"); MX=$2; TLS=$3; CERT=$4; KEY=$5
mkdir -p "$W/etc/sasl" "$W/queue" "$W/data" "$W/mail" "$W/sasl"
chown postfix:postfix "$W/data"
chown nobody:nogroup "$W/mail"
cp "$CERT" "$W/etc/cert.pem"; cp "$KEY" "$W/etc/key.pem"; chmod 600 "$W/etc/key.pem"

cat > "$W/etc/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $W/queue
data_directory = $W/data
meta_directory = /etc/postfix
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = pf.bench.test
mydomain = bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.1/32
maillog_file = $W/maillog
maillog_file_prefixes = $W
virtual_mailbox_domains = bench.test
virtual_mailbox_base = $W/mail
virtual_mailbox_maps = inline:{ bob@bench.test=bench.test/bob/Maildir/ }
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
virtual_minimum_uid = 100
smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination
smtpd_tls_cert_file = $W/etc/cert.pem
smtpd_tls_key_file = $W/etc/key.pem
smtpd_tls_security_level = may
smtpd_tls_session_cache_database =
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = $W/etc/sasl
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_event_limit_exceptions =
default_process_limit = 20000
smtpd_timeout = 300s
message_size_limit = 26214400
CF

cat > "$W/etc/master.cf" <<CF
127.0.0.1:$MX inet n - n - - smtpd
127.0.0.1:$TLS inet n - n - - smtpd -o smtpd_tls_wrappermode=yes -o smtpd_sasl_auth_enable=yes
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
local     unix  - n n - - local
virtual   unix  - n n - - virtual
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
CF

# Debian's Postfix reads $config_directory/sasl/smtpd.conf.
cat > "$W/etc/sasl/smtpd.conf" <<CF
pwcheck_method: auxprop
auxprop_plugin: sasldb
mech_list: PLAIN LOGIN
sasldb_path: $W/sasl/sasldb2
CF
echo pw | saslpasswd2 -p -f "$W/sasl/sasldb2" -c -u bench.test bob
chown postfix "$W/sasl/sasldb2"

postfix -c "$W/etc" check
postfix -c "$W/etc" start
