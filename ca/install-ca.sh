#!/bin/sh
# install-ca.sh - trust the egress-edge deployment CA inside a guest (container, VM or image root).
#
# Installs the CA into the distro trust store (Debian/Ubuntu, Alpine, RHEL/Fedora), refreshes the
# system bundle, and writes an env file pointing common tools at it. It does not fetch the CA
# (get it from `egress-edge ca export` or GET /ca.pem) and does not touch language-specific
# stores such as a JVM cacerts file.
#
# usage: install-ca.sh [--root DIR] [--env-file PATH] [--name NAME] CA_PEM
#   --root DIR       guest root to install into (default /); anything other than / is treated as
#                    an image being built: the bundle is patched directly instead of running tools
#   --env-file PATH  where to write the env file (default ROOT/etc/egress-edge/ca.env)
#   --name NAME      file name of the installed CA, without extension (default egress-edge-ca)
# Exit status: 0 installed, 1 bad usage or input, 2 unknown layout or installation failure.

set -eu

prog=install-ca.sh
root=/
env_file=
name=egress-edge-ca
ca_pem=

usage() {
    sed -n 's/^# \{0,1\}//; /^usage:/,/^Exit status/p' "$0" >&2
}

die() {
    code=$1
    shift
    printf '%s: %s\n' "$prog" "$*" >&2
    exit "$code"
}

while [ $# -gt 0 ]; do
    case $1 in
        --root) [ $# -ge 2 ] || die 1 "--root needs a directory"; root=$2; shift 2 ;;
        --root=*) root=${1#--root=}; shift ;;
        --env-file) [ $# -ge 2 ] || die 1 "--env-file needs a path"; env_file=$2; shift 2 ;;
        --env-file=*) env_file=${1#--env-file=}; shift ;;
        --name) [ $# -ge 2 ] || die 1 "--name needs a value"; name=$2; shift 2 ;;
        --name=*) name=${1#--name=}; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        -*) usage; die 1 "unknown option: $1" ;;
        *) [ -z "$ca_pem" ] || die 1 "only one CA_PEM may be given"; ca_pem=$1; shift ;;
    esac
done
if [ $# -gt 0 ]; then
    [ -z "$ca_pem" ] && [ $# -eq 1 ] || die 1 "only one CA_PEM may be given"
    ca_pem=$1
fi
[ -n "$ca_pem" ] || { usage; die 1 "missing CA_PEM"; }

case $name in
    ''|.*|*[!A-Za-z0-9._-]*) die 1 "--name must be letters, digits, '.', '_' or '-' (got '$name')" ;;
esac

# --- validate the input: a PEM certificate and nothing secret --------------------------------
[ -f "$ca_pem" ] && [ -r "$ca_pem" ] || die 1 "$ca_pem: not a readable file"
if grep -q 'PRIVATE KEY' "$ca_pem"; then
    die 1 "$ca_pem contains a PRIVATE KEY; refusing to copy a key into a guest (pass the CA certificate only)"
fi
grep -q -e '-----BEGIN CERTIFICATE-----' "$ca_pem" && grep -q -e '-----END CERTIFICATE-----' "$ca_pem" ||
    die 1 "$ca_pem is not a PEM CERTIFICATE (for DER input: openssl x509 -inform der -in FILE -out ca.pem)"

# --- locate the guest ----------------------------------------------------------------------
[ -d "$root" ] || die 1 "--root $root: not a directory"
# Paths below are as seen inside the guest; $p prefixes them for file access from here.
p=${root%/}
while [ "${p%/}" != "$p" ]; do p=${p%/}; done
[ -n "$p" ] && p=$(cd "$p" && pwd -P)
[ "$p" = / ] && p=
running_on_root=no
[ -z "$p" ] && running_on_root=yes

os_release_ids() {
    f=$p/etc/os-release
    [ -f "$f" ] || f=$p/usr/lib/os-release
    [ -f "$f" ] || return 0
    sed -n 's/^ID=//p; s/^ID_LIKE=//p' "$f" | tr -d '"' | tr ' ' '\n'
}

layout=
if [ -f "$p/etc/alpine-release" ]; then
    layout=alpine
elif [ -f "$p/etc/debian_version" ]; then
    layout=debian
elif [ -f "$p/etc/redhat-release" ] || [ -f "$p/etc/fedora-release" ] || [ -d "$p/etc/pki/ca-trust" ]; then
    layout=rhel
else
    for id in $(os_release_ids); do
        case $id in
            alpine) layout=alpine ;;
            debian|ubuntu) layout=debian ;;
            rhel|fedora|centos|rocky|almalinux|amzn) layout=rhel ;;
        esac
        [ -n "$layout" ] && break
    done
fi

case $layout in
    debian|alpine)
        anchor_dir=/usr/local/share/ca-certificates
        anchor=$anchor_dir/$name.crt
        bundle=/etc/ssl/certs/ca-certificates.crt
        tool=update-ca-certificates
        tool_args=
        ;;
    rhel)
        anchor_dir=/etc/pki/ca-trust/source/anchors
        anchor=$anchor_dir/$name.pem
        bundle=/etc/pki/tls/certs/ca-bundle.crt
        tool=update-ca-trust
        tool_args=extract
        ;;
    *)
        die 2 "unknown trust-store layout under ${p:-/}: expected Debian/Ubuntu (/etc/debian_version), Alpine (/etc/alpine-release) or RHEL/Fedora (/etc/redhat-release, /etc/pki/ca-trust)"
        ;;
esac

tmpdir=$(mktemp -d "${TMPDIR:-/tmp}/install-ca.XXXXXX") || die 2 "cannot create a temporary directory"
trap 'rm -rf "$tmpdir"' EXIT INT TERM

# Only the certificate blocks, without CRs: what gets installed and appended.
clean=$tmpdir/ca.pem
awk '
    { sub(/\r$/, "") }
    /^-----BEGIN CERTIFICATE-----$/ { inside = 1 }
    inside { print }
    /^-----END CERTIFICATE-----$/ { inside = 0 }
' "$ca_pem" >"$clean"
[ -s "$clean" ] || die 1 "$ca_pem has no complete CERTIFICATE block"

# One line per certificate: its base64 body, whitespace removed, for exact-content comparison.
bodies() {
    awk '
        { sub(/\r$/, "") }
        /^-----BEGIN CERTIFICATE-----$/ { inside = 1; body = ""; next }
        /^-----END CERTIFICATE-----$/ { if (inside) print body; inside = 0; next }
        inside { gsub(/[ \t]/, ""); body = body $0 }
    ' "$1"
}

# --- install the anchor --------------------------------------------------------------------
mkdir -p "$p$anchor_dir" || die 2 "cannot create $p$anchor_dir"
cp "$clean" "$p$anchor.tmp.$$" && chmod 0644 "$p$anchor.tmp.$$" && mv -f "$p$anchor.tmp.$$" "$p$anchor" ||
    { rm -f "$p$anchor.tmp.$$"; die 2 "cannot write $p$anchor"; }
echo "installed CA: $p$anchor"

# --- refresh the bundle --------------------------------------------------------------------
refreshed=no
if [ "$running_on_root" = yes ] && command -v "$tool" >/dev/null 2>&1; then
    # shellcheck disable=SC2086 # tool_args is intentionally word-split (empty or one word)
    "$tool" $tool_args >/dev/null || die 2 "$tool $tool_args failed"
    refreshed=yes
    echo "ran: $tool $tool_args"
fi
if [ "$refreshed" = no ]; then
    if [ -f "$p$bundle" ]; then
        bodies "$clean" >"$tmpdir/want"
        bodies "$p$bundle" >"$tmpdir/have"
        if grep -F -x -q -v -f "$tmpdir/have" "$tmpdir/want"; then
            # Keep PEM blocks separated even if the bundle lacks a final newline.
            if [ -s "$p$bundle" ] && [ "$(tail -c 1 "$p$bundle" | wc -l)" -eq 0 ]; then
                printf '\n' >>"$p$bundle" || die 2 "cannot write $p$bundle"
            fi
            cat "$clean" >>"$p$bundle" || die 2 "cannot append to $p$bundle"
            echo "appended CA to bundle: $p$bundle"
        else
            echo "bundle already contains the CA: $p$bundle"
        fi
    else
        echo "$prog: warning: $p$bundle does not exist; run '$tool $tool_args' in the guest so the env file's bundle path is valid" >&2
    fi
fi

# --- env file ------------------------------------------------------------------------------
[ -n "$env_file" ] || env_file=$p/etc/egress-edge/ca.env
mkdir -p "$(dirname "$env_file")" || die 2 "cannot create the directory of $env_file"
{
    echo "# Written by install-ca.sh: trust the egress-edge CA ($name). Source this file."
    echo "export SSL_CERT_FILE=$bundle"
    echo "export REQUESTS_CA_BUNDLE=$bundle"
    echo "export CURL_CA_BUNDLE=$bundle"
    echo "export NODE_EXTRA_CA_CERTS=$anchor"
    echo "export GIT_SSL_CAINFO=$bundle"
    echo "export PIP_CERT=$bundle"
} >"$env_file.tmp.$$" && mv -f "$env_file.tmp.$$" "$env_file" ||
    { rm -f "$env_file.tmp.$$"; die 2 "cannot write $env_file"; }
chmod 0644 "$env_file" || true
echo "wrote env file: $env_file"
