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

# make_small_src DIR: anchors.sh's cp -r source when missing (it makes it
# only for sshfs or rclone): 100 dirs of 100 random files of 5 KiB.
make_small_src() {
  [ -d "$1" ] || python3 -c '
import os, sys
for d in range(100):
    os.makedirs(f"{sys.argv[1]}/s{d:02d}")
    for f in range(100):
        with open(f"{sys.argv[1]}/s{d:02d}/f{f:02d}", "wb") as out: out.write(os.urandom(5 * 1024))
' "$1"
}

# start_sshfs DIR REMOTE MOUNTPOINT [sshfs options...]: sshd on an
# ephemeral loopback port (its key in DIR, allowed for root) and REMOTE
# mounted through sshfs at MOUNTPOINT; sets SSHD (the daemon's pid).
start_sshfs() {
  local d=$1 remote=$2 mnt=$3 port
  shift 3
  mkdir -p "$mnt" /run/sshd /root/.ssh
  [ -f "$d/key" ] || ssh-keygen -q -t ed25519 -N '' -f "$d/key"
  grep -qf "$d/key.pub" /root/.ssh/authorized_keys 2>/dev/null || cat "$d/key.pub" >>/root/.ssh/authorized_keys
  [ -f /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -A
  port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
  /usr/sbin/sshd -D -p "$port" -o ListenAddress=127.0.0.1 >"$d/sshd.log" 2>&1 &
  SSHD=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  sshfs -p "$port" -o IdentityFile="$d/key",StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null "$@" \
    "root@127.0.0.1:$remote" "$mnt"
}
