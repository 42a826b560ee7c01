# Helpers shared by bench/run.sh and bench/interleaved.sh (sourced; both set SERVER_CPU and
# LOAD_CPU first).

on_server() { taskset -c "$SERVER_CPU" "$@"; }
on_load() { taskset -c "$LOAD_CPU" "$@"; }
# ticks PID: the process's CPU so far, utime + stime, in clock ticks (every thread).
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# listen_on PORT < CONFIG > CONFIG: a bench config with its listener moved to PORT.
listen_on() { sed "s|^listen = \"127.0.0.1:[0-9]*\"|listen = \"127.0.0.1:$1\"|"; }
