# Shared by scripts/bench and scripts/soak: processes on loopback that end
# with the script. Source it after setting `out` (the folder for logs).
#
#   pids            every process started, killed on exit
#   free_port       prints a free TCP port on 127.0.0.1
#   start_redis     starts redis-server without persistence; sets redis_port and redis_pid

pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_redis() {
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    --logfile "$out/redis.log" &
  redis_pid=$!
  pids+=("$redis_pid")
  until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.05; done
}
