#!/bin/sh
# Regenerate the DEVELOPMENT certificate authority and server certificate.
#
#   sh certs/generate.sh [DIR]      (DIR defaults to the folder of this script)
#
# Writes ca.pem, ca.key, server.pem, server.key, and client certificates
# clients/NAME.pem + clients/NAME.key for the development users (alice, bob,
# rita, ada; CN = user name, extendedKeyUsage clientAuth). Later client
# certificates: jobworker-issue-cert --ca ca.pem --ca-key ca.key NAME. The server certificate is
# signed by the CA and carries the SANs localhost, 127.0.0.1 and ::1, so the
# jw CLI verifies it (host name included) out of the box. These files are for
# development and tests only: the private keys are public, in git. For a real
# deployment issue a certificate from your own CA and pass --cert/--key.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$here}
cd "$dir"
days=3650
umask 077
openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout ca.key -out ca.pem -days "$days" -sha256 \
    -subj "/CN=jobworker development CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign"
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout server.key -out server.csr -subj "/CN=localhost"
cat > server.ext <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
EXT
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
    -out server.pem -days "$days" -sha256 -extfile server.ext
rm -f server.csr server.ext ca.srl
chmod 644 ca.pem server.pem
if [ "$(pwd)" = "$here" ]; then
    # jw trusts the development CA for loopback names: ship it in the package.
    cp ca.pem "$here/../jobworker/data/dev-ca.pem"
fi
chmod 600 ca.key server.key
mkdir -p clients
for name in alice bob rita ada; do
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -keyout "clients/$name.key" -out "clients/$name.csr" -subj "/CN=$name"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=clientAuth" > clients/client.ext
    openssl x509 -req -in "clients/$name.csr" -CA ca.pem -CAkey ca.key \
        -CAcreateserial -out "clients/$name.pem" -days "$days" -sha256 \
        -extfile clients/client.ext
    rm -f "clients/$name.csr" clients/client.ext ca.srl
    chmod 644 "clients/$name.pem"
    chmod 600 "clients/$name.key"
done
