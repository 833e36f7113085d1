#!/usr/bin/env bash
# Make the Python environment of the test SAML IdP (tests/saml/idp.py): a venv with pysaml2
# and everything it imports, at pinned versions. Idempotent: when the venv's stamp file already
# lists exactly the pins below, nothing runs.
#
#   scripts/saml-idp-env.sh      venv at $PORTCULLIS_SAML_VENV (default: target/saml-idp-venv,
#                                relative to the repository root)
#
# Needs python3 with its venv module (Debian: python3-venv, see scripts/install-deps.sh) and
# network access to PyPI for the first run. Signing itself is done by the xmlsec1 binary.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PORTCULLIS_SAML_VENV:-target/saml-idp-venv}"
case "$venv" in /*) ;; *) venv="$root/$venv" ;; esac
stamp="$venv/portcullis-requirements.txt"

# pysaml2 and lxml are what idp.py uses, freezegun moves its clock; the rest are their
# dependencies, pinned too so every machine signs with the same code.
requirements='pysaml2==7.5.5
lxml==6.1.3
freezegun==1.5.5
cryptography==50.0.2
cffi==2.1.1
pycparser==3.12
pyOpenSSL==26.4.0
defusedxml==0.7.1
elementpath==4.8.0
xmlschema==2.5.1
python-dateutil==4.0.0
requests==2.34.2
certifi==2026.10.18
charset-normalizer==3.5.2
idna==3.20
urllib3==2.8.0
typing_extensions==4.16.0
tzdata==2026.6'

die() {
    echo "error: saml-idp-env.sh: $*" >&2
    exit 1
}

# The interpreter must still run too: a venv outlives the python3 it was made from.
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$requirements" ] && "$venv/bin/python" -c '' 2>/dev/null; then
    exit 0
fi

command -v python3 >/dev/null 2>&1 || die "python3 not found; run scripts/install-deps.sh (Debian: apt-get install python3 python3-venv)"
python3 -m venv --help >/dev/null 2>&1 || die "python3 has no venv module; run scripts/install-deps.sh (Debian: apt-get install python3-venv)"

echo "saml-idp-env: making $venv" >&2
rm -rf "$venv"
python3 -m venv "$venv" || die "python3 -m venv $venv failed (Debian: apt-get install python3-venv)"
req_file="$(mktemp)"
trap 'rm -f "$req_file"' EXIT
printf '%s\n' "$requirements" >"$req_file"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --require-virtualenv \
    -r "$req_file" || die "pip install into $venv failed (network access to PyPI?)"
"$venv/bin/python" -c 'import saml2, lxml, freezegun' || die "$venv cannot import saml2, lxml and freezegun"
printf '%s' "$requirements" >"$stamp"
echo "saml-idp-env: ready ($venv)" >&2
