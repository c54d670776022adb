#!/usr/bin/env bash
# The main job on an embedded default: install, build, start a server with a
# demo project (data in ./.demo), print how to use it. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)" --target tidefs

BIN=$PWD/build/tidefs
DATA=$PWD/.demo/data
LISTEN=${TIDEFS_LISTEN:-127.0.0.1:7750}
mkdir -p "$DATA"
if ! "$BIN" admin --data "$DATA" project list | grep -q '^demo'; then
  "$BIN" admin --data "$DATA" project create demo
fi
TOKEN_FILE=$PWD/.demo/token
if [ ! -s "$TOKEN_FILE" ]; then
  "$BIN" admin --data "$DATA" token create --project demo --device demo-laptop | tail -n 1 >"$TOKEN_FILE"
  chmod 600 "$TOKEN_FILE"
fi
TOKEN=$(cat "$TOKEN_FILE")
URL="http://$LISTEN"
# The mount and import read the server and token from here, so the token
# stays off the command line (and out of `ps`).
CONFIG=$PWD/.demo/config
rm -f "$CONFIG"
(umask 077; printf '[demo]\nserver = %s\ntoken = %s\n' "$URL" "$TOKEN" >"$CONFIG")

"$BIN" serve --data "$DATA" --listen "$LISTEN" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT INT TERM
for _ in $(seq 100); do curl -fs "$URL/healthz" >/dev/null && break; sleep 0.1; done

if [ -z "$(curl -fs -H @<(printf 'Authorization: Bearer %s\n' "$TOKEN") "$URL/v1/projects/demo/nodes?limit=1" | grep -o '"id"')" ]; then
  SEED=$(mktemp -d)
  mkdir -p "$SEED/docs"
  printf 'Welcome to tidefs.\nThis project lives on the server at %s.\n' "$URL" >"$SEED/README.txt"
  printf 'a file inside a folder\n' >"$SEED/docs/notes.txt"
  "$BIN" import --config "$CONFIG" --project demo "$SEED" >/dev/null
  rm -rf "$SEED"
fi

MNT=$PWD/mnt
mkdir -p "$MNT"
mountpoint -q "$MNT" && fusermount3 -u "$MNT"
"$BIN" mount --config "$CONFIG" --project demo --cache-dir "$PWD/.demo/cache" "$MNT"
trap 'fusermount3 -u "$MNT" 2>/dev/null; kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT INT TERM

cat <<TXT

tidefs server running at $URL  (data in $DATA)
project demo mounted at $MNT  (cache in .demo/cache)
token: $TOKEN_FILE; server and token for tidefs commands: $CONFIG

Try:
  ls -l $MNT; cat $MNT/README.txt; echo hello > $MNT/hello.txt
  $BIN import --config $CONFIG --project demo ~/some/folder some/folder
  export TIDEFS_TOKEN=\$(cat $TOKEN_FILE)
  curl -H "Authorization: Bearer \$TIDEFS_TOKEN" '$URL/v1/projects/demo/nodes'

Ctrl-C unmounts and stops the server.
TXT
wait $SERVER
