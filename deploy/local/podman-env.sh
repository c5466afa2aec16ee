# Source me: podman settings for deploy/local (never the machine's own containers.conf).
#
# - runtime runc: crun fails in sandboxes that forbid raising RLIMIT_NOFILE;
# - default ulimits no higher than this shell's hard limits: rootful podman otherwise asks
#   for 1048576 open files and processes, which a container manager without
#   CAP_SYS_RESOURCE refuses ("error setting rlimit type 7: operation not permitted").
#   The process limit stays at 32768 or below: runc's init could not raise it further on
#   the machines this was tried on, whatever the shell allowed;
# - events in a file: there is no journald in a container-less CI machine.
# The file is written under ~/.cache/tsweep/podman/ and named by CONTAINERS_CONF, which
# every podman command of these scripts (and the cleanup processes it starts) reads.
_tsweep_podman_dir="${TSWEEP_CACHE:-$HOME/.cache/tsweep}/podman"
mkdir -p "$_tsweep_podman_dir"
_tsweep_nofile="$(ulimit -Hn)"
_tsweep_nproc="$(ulimit -Hu)"
[ "$_tsweep_nofile" = unlimited ] || [ "$_tsweep_nofile" -gt 1048576 ] && _tsweep_nofile=1048576
[ "$_tsweep_nproc" = unlimited ] || [ "$_tsweep_nproc" -gt 32768 ] && _tsweep_nproc=32768
cat >"$_tsweep_podman_dir/containers.conf.tmp" <<CONF
# written by deploy/local/podman-env.sh
[containers]
default_ulimits = ["nofile=$_tsweep_nofile:$_tsweep_nofile", "nproc=$_tsweep_nproc:$_tsweep_nproc"]

[engine]
runtime = "runc"
events_logger = "file"
CONF
mv "$_tsweep_podman_dir/containers.conf.tmp" "$_tsweep_podman_dir/containers.conf"
export CONTAINERS_CONF="$_tsweep_podman_dir/containers.conf"
unset _tsweep_podman_dir _tsweep_nofile _tsweep_nproc
