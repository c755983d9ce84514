/**
 * The director's on-VM job control, installed as `<base>/bin/ctl`. Plain POSIX sh so it runs on
 * any Linux image without an agent to install: it starts each job's `bin/start` detached in its
 * own session (so the job outlives the SSH channel and can be stopped as a process group),
 * stops jobs gracefully with a deadline, runs drain and pre-start hooks, and reports state.
 *
 * Layout under <base> (default ~/director):
 *   gen/<id>/jobs/<job>/   one generation: release files + rendered templates
 *   current -> gen/<id>    what runs now;  previous -> gen/<id>  what ran before (rollback target)
 *   run/<job>.pid, run/<job>.dir   the running process and the generation it started from
 *   log/<job>.stdout.log, log/<job>.stderr.log
 */
export const CTL_SCRIPT = `#!/bin/sh
set -u
BASE=$(cd "$(dirname "$0")/.." && pwd)
RUN="$BASE/run"
LOGS="$BASE/log"
STOP_TIMEOUT=\${DIRECTOR_STOP_TIMEOUT:-20}
mkdir -p "$RUN" "$LOGS"

# A stopped job can linger as a zombie for a moment and still answer kill -0: read its state.
alive() {
  [ -n "$1" ] || return 1
  kill -0 "$1" 2>/dev/null || return 1
  if [ -r "/proc/$1/stat" ]; then
    st=$(sed 's/^.*) //' "/proc/$1/stat" | cut -d' ' -f1)
    [ "$st" != Z ] || return 1
  fi
  return 0
}

pid_of() { cat "$RUN/$1.pid" 2>/dev/null || true; }

current_jobs() { [ -d "$BASE/current/jobs" ] && ls "$BASE/current/jobs"; }

known_jobs() {
  { current_jobs; for f in "$RUN"/*.pid; do [ -e "$f" ] && basename "$f" .pid; done; } | sort -u
}

start_job() {
  job=$1
  pid=$(pid_of "$job")
  if alive "$pid"; then echo "$job: already running (pid $pid)"; return 0; fi
  dir=$(cd "$BASE/current/jobs/$job" && pwd -P) || { echo "$job: not installed" >&2; return 1; }
  rm -f "$RUN/$job.draining"
  if [ -x "$dir/bin/pre-start" ]; then
    echo "$job: pre-start"
    JOB_NAME=$job JOB_DIR=$dir DIRECTOR_RUN=$RUN "$dir/bin/pre-start" || { echo "$job: pre-start failed" >&2; return 1; }
  fi
  JOB_NAME=$job JOB_DIR=$dir DIRECTOR_RUN=$RUN DIRECTOR_LOGS=$LOGS \\
    setsid nohup "$dir/bin/start" >>"$LOGS/$job.stdout.log" 2>>"$LOGS/$job.stderr.log" </dev/null &
  pid=$!
  echo "$pid" >"$RUN/$job.pid"
  echo "$dir" >"$RUN/$job.dir"
  echo "$job: started (pid $pid)"
}

stop_job() {
  job=$1
  pid=$(pid_of "$job")
  if ! alive "$pid"; then rm -f "$RUN/$job.pid"; echo "$job: not running"; return 0; fi
  dir=$(cat "$RUN/$job.dir" 2>/dev/null || echo "$BASE/current/jobs/$job")
  if [ -x "$dir/bin/stop" ]; then
    JOB_NAME=$job JOB_DIR=$dir JOB_PID=$pid DIRECTOR_RUN=$RUN "$dir/bin/stop" || echo "$job: bin/stop exited $?" >&2
  else
    kill -TERM "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  fi
  i=0
  while alive "$pid" && [ "$i" -lt $((STOP_TIMEOUT * 10)) ]; do sleep 0.1; i=$((i + 1)); done
  if alive "$pid"; then
    kill -KILL "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
    echo "$job: did not stop within \${STOP_TIMEOUT}s, killed"
  else
    echo "$job: stopped"
  fi
  rm -f "$RUN/$job.pid" "$RUN/$job.draining"
}

drain_job() {
  job=$1
  pid=$(pid_of "$job")
  alive "$pid" || return 0
  dir=$(cat "$RUN/$job.dir" 2>/dev/null || echo "$BASE/current/jobs/$job")
  [ -x "$dir/bin/drain" ] || return 0
  touch "$RUN/$job.draining"
  # BOSH's contract: drain prints how many seconds to wait before the job may be stopped.
  out=$(JOB_NAME=$job JOB_DIR=$dir JOB_PID=$pid DIRECTOR_RUN=$RUN "$dir/bin/drain") || { echo "$job: drain failed" >&2; return 1; }
  wait_s=$(printf '%s\\n' "$out" | tail -n 1 | tr -cd '0-9')
  echo "$job: drained\${wait_s:+, waiting \${wait_s}s}"
  [ -n "$wait_s" ] && [ "$wait_s" -gt 0 ] && sleep "$wait_s"
  return 0
}

status_job() {
  job=$1
  pid=$(pid_of "$job")
  if alive "$pid"; then echo "$job running $pid"
  elif [ -n "$pid" ]; then echo "$job failed -"
  else echo "$job stopped -"
  fi
}

cmd=\${1:-status}
[ $# -gt 0 ] && shift
if [ $# -gt 0 ]; then jobs="$*"
elif [ "$cmd" = start ]; then jobs=$(current_jobs)
else jobs=$(known_jobs)
fi
rc=0
for job in $jobs; do
  case "$cmd" in
    start) start_job "$job" || rc=1 ;;
    stop) stop_job "$job" || rc=1 ;;
    drain) drain_job "$job" || rc=1 ;;
    status) status_job "$job" ;;
    *) echo "usage: ctl start|stop|drain|status [job...]" >&2; exit 2 ;;
  esac
done
exit $rc
`;
