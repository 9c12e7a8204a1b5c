# Sourced by the benchmark scripts: a throwaway distribution registry (Debian's
# docker-registry) on 127.0.0.1 with its access log on.
#
# Needs W (a work directory), HOST (127.0.0.1:PORT) and REG_PID (empty at first) set by the
# caller, whose cleanup trap kills "$REG_PID".

# A fresh, empty registry (storage wiped, server restarted). Call it in the script's shell,
# not in $(…), so that the registry's pid stays known to the cleanup trap.
start_registry() {
  [ -n "$REG_PID" ] && { kill "$REG_PID"; wait "$REG_PID" 2>/dev/null || true; }
  rm -rf "$W/registry"
  mkdir -p "$W/registry"
  cat > "$W/registry.yml" <<EOT
version: 0.1
log:
  level: error
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $W/registry
  delete:
    enabled: true
http:
  addr: $HOST
EOT
  docker-registry serve "$W/registry.yml" > "$W/registry.log" 2>&1 &
  REG_PID=$!
  for _ in $(seq 100); do curl -fsS "http://$HOST/v2/" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "$(basename "$0"): the registry did not start" >&2; cat "$W/registry.log" >&2; exit 1
}
