#!/usr/bin/env bash
# Records and a DKIM-signed message for the benchmarks' sender-authentication scenario.
# Usage: auth-fixture.sh DIR
# Writes DIR/zone (the mailwarden-testdns zone format, served by mwdns), DIR/key.pem and
# DIR/signed.eml: a 1 KB message from load@signed.bench.example, signed with RSA-2048,
# relaxed/relaxed, by dkimpy (an implementation independent of both servers). The domain
# publishes SPF for 127.0.0.0/8 and DMARC p=reject, so a server that checks finds
# spf=pass dkim=pass dmarc=pass. bench.example (mwload's default sender) publishes SPF only.
set -euo pipefail
D=$1
mkdir -p "$D"
python3 -c "import dkim" 2>/dev/null || python3 -m pip install --quiet dkimpy \
  || python3 -m pip install --quiet --break-system-packages dkimpy
openssl genrsa -out "$D/key.pem" 2048 2>/dev/null
PUB=$(openssl rsa -in "$D/key.pem" -pubout -outform DER 2>/dev/null | base64 -w0)
cat > "$D/zone" <<Z
bench.example                          TXT "v=spf1 ip4:127.0.0.0/8 -all"
signed.bench.example                   TXT "v=spf1 ip4:127.0.0.0/8 -all"
_dmarc.signed.bench.example            TXT "v=DMARC1; p=reject"
bench._domainkey.signed.bench.example  TXT "v=DKIM1; k=rsa; p=$PUB"
mwload.bench.example                   A   127.0.0.1
1.0.0.127.in-addr.arpa                 PTR mwload.bench.example
Z
python3 - "$D" <<'PY'
import dkim, sys
d = sys.argv[1]
line = "The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
msg = ("From: Load <load@signed.bench.example>\r\nTo: <bob@bench.test>\r\nSubject: signed load\r\n"
       "Date: Mon, 23 Nov 2026 09:00:00 +0000\r\nMessage-ID: <signed@signed.bench.example>\r\n"
       "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n" + line * 11).encode()
sig = dkim.sign(msg, b"bench", b"signed.bench.example", open(f"{d}/key.pem", "rb").read(),
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=[b"from", b"to", b"subject", b"date", b"message-id", b"mime-version"])
open(f"{d}/signed.eml", "wb").write(sig + msg)
PY
