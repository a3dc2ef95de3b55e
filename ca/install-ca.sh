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
#   --env-file PATH  where to write the env file (default ROOT/etc/egress-edge/ca.env); a path
#                    under ROOT is a guest path like the default, any other is used as given
#   --name NAME      file name of the installed CA, without extension (default egress-edge-ca)
# Exit status: 0 installed, 1 bad usage or input, 2 unknown layout or installation failure.
#
# Nothing is ever written outside ROOT. Symlinks inside ROOT are resolved the way the guest sees
# them (chroot-style: an absolute target T means ROOT/T), never followed on the host; a path
# whose links lead above ROOT (via '..') is refused before anything is written.

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
root_given=$p
[ -n "$p" ] && p=$(cd "$p" && pwd -P)
[ "$p" = / ] && p=
running_on_root=no
[ -z "$p" ] && running_on_root=yes

nl='
'

# Sets r_target to the target of the symlink $1, exactly (command substitution would drop
# trailing newlines, hence the sentinel).
link_target() {
    if command -v readlink >/dev/null 2>&1; then
        r_target=$(readlink "$1" && echo x) || die 2 "cannot read the symlink $1"
        r_target=${r_target%x}
        r_target=${r_target%"$nl"}
    else
        r_target=$(ls -ld "$1" && echo x) || die 2 "cannot read the symlink $1"
        r_target=${r_target%x}
        r_target=${r_target%"$nl"}
        r_target=${r_target#*"$1 -> "}
    fi
}

# resolve GUEST_PATH: sets $resolved to the absolute guest path GUEST_PATH leads to, with every
# symlink along it resolved as inside the guest (an absolute target restarts from ROOT, not from
# the host's /), so "$p$resolved" is the file to touch and is always inside ROOT. Components
# that do not exist yet are taken as they are (to be created). Dies when a '..' would climb
# above ROOT or the links loop. Only links are read; nothing is written.
resolve() {
    case $1 in
        /*) ;;
        *) die 2 "internal error: $1 is not an absolute guest path" ;;
    esac
    r_cur=
    r_rest=$1
    r_hops=0
    while [ -n "$r_rest" ]; do
        r_rest=${r_rest#/}
        r_comp=${r_rest%%/*}
        r_rest=${r_rest#"$r_comp"}
        case $r_comp in
            '' | .) continue ;;
            ..)
                if [ -z "$r_cur" ]; then
                    # At the real / (no --root) '..' stays at /, as the kernel does.
                    [ -z "$p" ] && continue
                    die 2 "refusing $1: resolved inside the guest root $p, it leads above the guest root (via '..'); nothing was written"
                fi
                r_cur=${r_cur%/*}
                continue
                ;;
        esac
        if [ -h "$p$r_cur/$r_comp" ]; then
            r_hops=$((r_hops + 1))
            [ "$r_hops" -le 40 ] ||
                die 2 "refusing $1: too many levels of symbolic links under ${p:-/}; nothing was written"
            link_target "$p$r_cur/$r_comp"
            [ -n "$r_target" ] || die 2 "refusing $1: $p$r_cur/$r_comp is an empty symlink"
            case $r_target in
                /*) r_cur= ;;
            esac
            r_rest=$r_target$r_rest
        else
            r_cur=$r_cur/$r_comp
        fi
    done
    resolved=${r_cur:-/}
}

# Host path of guest path $1, resolved inside the root: sets $host.
in_root() {
    resolve "$1"
    host=$p$resolved
}

guest_file() {
    in_root "$1"
    [ -f "$host" ]
}

# The guest's os-release, if any (resolved here, not in the $(...) subshell below, so that a
# refusal ends the script).
os_release=
if guest_file /etc/os-release; then
    os_release=$host
elif guest_file /usr/lib/os-release; then
    os_release=$host
fi
os_release_ids() {
    [ -n "$os_release" ] || return 0
    sed -n 's/^ID=//p; s/^ID_LIKE=//p' "$os_release" | tr -d '"' | tr ' ' '\n'
}

layout=
if guest_file /etc/alpine-release; then
    layout=alpine
elif guest_file /etc/debian_version; then
    layout=debian
elif guest_file /etc/redhat-release || guest_file /etc/fedora-release ||
    { in_root /etc/pki/ca-trust && [ -d "$host" ]; }; then
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
        bundle_via=
        tool=update-ca-certificates
        tool_args=
        ;;
    rhel)
        anchor_dir=/etc/pki/ca-trust/source/anchors
        anchor=$anchor_dir/$name.pem
        bundle=/etc/pki/tls/certs/ca-bundle.crt
        bundle_via=
        tool=update-ca-trust
        tool_args=extract
        ;;
    *)
        die 2 "unknown trust-store layout under ${p:-/}: expected Debian/Ubuntu (/etc/debian_version), Alpine (/etc/alpine-release) or RHEL/Fedora (/etc/redhat-release, /etc/pki/ca-trust)"
        ;;
esac

# --- resolve every path to be written inside the root, before writing anything -------------
in_root "$anchor"
anchor_host=$host
in_root "$bundle"
bundle_host=$host
[ "$bundle_host" = "$p$bundle" ] || bundle_via=" (via symlinks from $bundle)"
if [ -z "$env_file" ]; then
    in_root /etc/egress-edge/ca.env
    env_file=$host
elif [ -n "$p" ]; then
    # An env file under the root is a guest path: resolve it there, like the default.
    for prefix in "$p" "$root_given"; do
        case $env_file in
            "$prefix"/*)
                in_root "/${env_file#"$prefix"/}"
                env_file=$host
                break
                ;;
        esac
    done
fi
[ ! -d "$anchor_host" ] || die 2 "$anchor_host is a directory; cannot install the CA there"
[ ! -d "$env_file" ] || die 2 "$env_file is a directory; cannot write the env file there"

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
anchor_dir_host=${anchor_host%/*}
mkdir -p "$anchor_dir_host" || die 2 "cannot create $anchor_dir_host"
# rm first: a stale temp name that is a symlink must not be written through.
rm -f "$anchor_host.tmp.$$" &&
    cp "$clean" "$anchor_host.tmp.$$" && chmod 0644 "$anchor_host.tmp.$$" && mv -f "$anchor_host.tmp.$$" "$anchor_host" ||
    { rm -f "$anchor_host.tmp.$$"; die 2 "cannot write $anchor_host"; }
echo "installed CA: $anchor_host"

# --- refresh the bundle --------------------------------------------------------------------
refreshed=no
if [ "$running_on_root" = yes ] && command -v "$tool" >/dev/null 2>&1; then
    # shellcheck disable=SC2086 # tool_args is intentionally word-split (empty or one word)
    "$tool" $tool_args >/dev/null || die 2 "$tool $tool_args failed"
    refreshed=yes
    echo "ran: $tool $tool_args"
fi
if [ "$refreshed" = no ]; then
    if [ -f "$bundle_host" ]; then
        bodies "$clean" >"$tmpdir/want"
        bodies "$bundle_host" >"$tmpdir/have"
        if grep -F -x -q -v -f "$tmpdir/have" "$tmpdir/want"; then
            # Keep PEM blocks separated even if the bundle lacks a final newline.
            if [ -s "$bundle_host" ] && [ "$(tail -c 1 "$bundle_host" | wc -l)" -eq 0 ]; then
                printf '\n' >>"$bundle_host" || die 2 "cannot write $bundle_host"
            fi
            cat "$clean" >>"$bundle_host" || die 2 "cannot append to $bundle_host"
            echo "appended CA to bundle: $bundle_host$bundle_via"
        else
            echo "bundle already contains the CA: $bundle_host$bundle_via"
        fi
    else
        echo "$prog: warning: $bundle_host$bundle_via does not exist; run '$tool $tool_args' in the guest so the env file's bundle path is valid" >&2
    fi
fi

# --- env file ------------------------------------------------------------------------------
mkdir -p "$(dirname "$env_file")" || die 2 "cannot create the directory of $env_file"
rm -f "$env_file.tmp.$$" || die 2 "cannot write $env_file"
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
