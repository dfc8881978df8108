#!/bin/sh
# Entrypoint of the appliance images (images/config.nix runs it as `sh entrypoint.sh INIT APPLIANCE [ARGS...]`).
#
# POSIX sh using only shell builtins and coreutils (env, mkdir, ln), the tools the image's system group ships;
# tests/test_images.py runs it under sh with a PATH that holds exactly those.
#
# No arguments: systemd becomes PID 1 (INIT). systemd does not hand PID 1's environment to services, so the
# variables the units need are copied into /etc/appliance/appliance.env (every unit's EnvironmentFile=):
# APPLIANCE_* settings, and what the container runtime sets for the GPU (LD_LIBRARY_PATH, NVIDIA_*, CUDA_*;
# Nix-built CUDA on a non-NixOS host finds libcuda only through LD_LIBRARY_PATH). podman/docker secrets in
# /run/secrets are linked into /run/credstore, where the units' LoadCredential=<id> looks.
# With arguments: one process, `APPLIANCE ARGS...` (supervised container mode for `machine`).
#
# ENTRYPOINT_ROOT (tests only) prefixes every path written, so the script can run without root.
set -eu

init=$1
appliance=$2
shift 2
root=${ENTRYPOINT_ROOT:-}

if [ -f "$root/etc/appliance/config.toml" ] && [ -z "${APPLIANCE_CONFIG:-}" ]; then
  export APPLIANCE_CONFIG=/etc/appliance/config.toml
fi

if [ "$#" -eq 0 ]; then
  mkdir -p "$root/etc/appliance" "$root/run/credstore"
  # One variable per line as `env` prints it; a value with a newline cannot pass this way (use the config
  # file). `read -r` keeps backslashes; IFS= keeps leading blanks.
  env | while IFS= read -r line; do
    case $line in
      APPLIANCE_*=* | LD_LIBRARY_PATH=* | NVIDIA_*=* | CUDA_*=*) printf '%s\n' "$line" ;;
    esac
  done > "$root/etc/appliance/appliance.env"
  for secret in "$root"/run/secrets/*; do
    if [ -f "$secret" ]; then
      ln -sfn "$secret" "$root/run/credstore/${secret##*/}"
    fi
  done
  exec "$init"
fi

export APPLIANCE_MACHINE__CONTAINER_MODE="${APPLIANCE_MACHINE__CONTAINER_MODE:-true}"
export CREDENTIALS_DIRECTORY="${CREDENTIALS_DIRECTORY:-/run/secrets}"
exec "$appliance" "$@"
