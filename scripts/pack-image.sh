#!/usr/bin/env bash
# Packs a dynamically linked program and the shared libraries it needs (as `ldd` resolves them
# here) into a minimal image with `docker import`: no base image and no registry needed.
#
#   scripts/pack-image.sh TAG PROGRAM [--label KEY=VALUE]... [--cmd ARG]... [-- ENTRYPOINT ARGS...]
#
# The program lands at /usr/local/bin/<name> and is the image's entrypoint, followed by the
# ENTRYPOINT ARGS; `--cmd` arguments are the default command (what `docker run IMAGE` appends
# when given none). An image with the same tag and the same `kitt.content` label (a hash of the
# program, its libraries and these options) is kept, so calling this again costs a second.
set -euo pipefail

tag="$1"; program="$2"; shift 2
labels=(); cmd=(); entry_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --label) labels+=("$2"); shift 2 ;;
    --cmd) cmd+=("$2"); shift 2 ;;
    --) shift; entry_args=("$@"); break ;;
    *) echo "pack-image.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

program="$(readlink -f "$program")"
name="$(basename "$program")"
# The loader and every library, resolved through symlinks (their link names are kept too).
mapfile -t libs < <(ldd "$program" | awk '/=> \//{print $3} /^[ \t]*\/.*ld-linux/{print $1}' | sort -u)

json_array() {
  local out="[" sep=""
  for a in "$@"; do
    a="${a//\\/\\\\}"; a="${a//\"/\\\"}"
    out+="$sep\"$a\""; sep=","
  done
  echo "$out]"
}
entrypoint="$(json_array "/usr/local/bin/$name" "${entry_args[@]+"${entry_args[@]}"}")"
content="$( { sha256sum "$program"; for l in "${libs[@]}"; do sha256sum "$(readlink -f "$l")"; done
  echo "$entrypoint ${cmd[*]+"${cmd[*]}"} ${labels[*]+"${labels[*]}"}"; } | sha256sum | cut -c1-16)"

if [ "$(docker image inspect --format '{{index .Config.Labels "kitt.content"}}' -- "$tag" 2>/dev/null || true)" = "$content" ]; then
  echo "$tag"
  exit 0
fi

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/tmp" "$root/etc" "$root/models"
chmod 1777 "$root/tmp"
cp "$program" "$root/usr/local/bin/$name"
for l in "${libs[@]}"; do
  mkdir -p "$root$(dirname "$l")"
  cp -L "$l" "$root$l"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"

changes=(--change "ENTRYPOINT $entrypoint" --change "LABEL kitt.content=$content")
if [ ${#cmd[@]} -gt 0 ]; then
  changes+=(--change "CMD $(json_array "${cmd[@]}")")
fi
for l in "${labels[@]+"${labels[@]}"}"; do
  changes+=(--change "LABEL $l")
done
tar -C "$root" -c . | docker import "${changes[@]}" - "$tag" >/dev/null
echo "$tag"
