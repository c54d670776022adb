# Sourced by the bench scripts: a real `tidefs serve` on an ephemeral
# loopback port, and projects with tokens on it. Needs BIN (the binary).

# start_server DIR: serves DIR/data, logs to DIR/serve.log; sets PID, URL, DATA.
start_server() {
  DATA=$1/data
  rm -f "$1/ready"
  "$BIN" serve --data "$DATA" --listen 127.0.0.1:0 --ready-file "$1/ready" 2>"$1/serve.log" &
  PID=$!
  for _ in $(seq 200); do [ -s "$1/ready" ] && break; sleep 0.05; done
  URL=$(cat "$1/ready")
}

# token PROJECT: creates the project and prints a read-write token for it.
token() {
  "$BIN" admin --data "$DATA" project create "$1" >/dev/null
  "$BIN" admin --data "$DATA" token create --project "$1" --device bench | tail -n 1
}
