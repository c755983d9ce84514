/**
 * The thin shell: parse arguments, call one application service, render. Errors are caught once,
 * here, and mapped to exit codes: 0 success, 1 failure (bad input, a failed rollout, an
 * unreachable cloud), 2 changes pending (`plan --detailed-exitcode`), 130 interrupted.
 * Stack traces only with --debug.
 */
import { Command, CommanderError } from 'commander';
import { writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline/promises';
import { openContext, directorHome, type DirectorContext } from '../app/context.js';
import { deleteDeployment } from '../app/delete.js';
import { deploy, prepare, prepareInTask, type DeployInput } from '../app/deploy.js';
import { instanceHealth } from '../app/repair.js';
import { listVms } from '../app/vms.js';
import { formatLocation, isDirectorError, userError } from '../errors.js';
import { LocalCloudClient } from '../local-cloud/client.js';
import type { Plan } from '../plan/types.js';
import type { LogRow, TaskRow } from '../tasks/tasks.js';
import { bashCompletion, zshCompletion } from './completion.js';
import { collect, parseVars } from './options.js';
import { followTask } from './follow.js';
import { EventView, type ProgressPlan, type Terminal } from './progress.js';
import { formatDuration, renderEvent, renderLogs, renderPlan, renderTask, renderTasks, renderVms, table } from './render.js';
import { registerLocalCloudFaults, registerRepairCommands } from './repair-commands.js';
import { buildTimeline, renderTimeline, renderTimelineHtml } from './timeline.js';
import {
  TASK_STATES, deploymentsView, eventsView, instancesView, parseSince, parseStates, renderDebugLine, renderDeployments, renderHistory,
  renderInstances, renderLogLine, renderOutcome, taskDurationMs,
} from './views.js';

interface Io {
  out: (s: string) => void;
  err: (s: string) => void;
  /** stdin and stdout are terminals: a prompt can be answered */
  isTty: boolean;
  /** stdout, raw: no newline added (the live status line) */
  write: (s: string) => void;
  /** stdout is a terminal: the live status line is drawn */
  outIsTty: boolean;
  columns: () => number;
  env: Record<string, string | undefined>;
}

const defaultIo: Io = {
  out: (s) => process.stdout.write(`${s}\n`),
  err: (s) => process.stderr.write(`${s}\n`),
  isTty: Boolean(process.stdin.isTTY && process.stdout.isTTY),
  write: (s) => process.stdout.write(s),
  outIsTty: Boolean(process.stdout.isTTY),
  columns: () => process.stdout.columns ?? 0,
  env: process.env,
};

const terminal = (io: Io): Terminal => ({ write: io.write, isTty: io.outIsTty, columns: io.columns, env: io.env });

/** What the live status line needs from the plan beyond the events: totals and waves. */
function progressPlan(plan: Plan): ProgressPlan {
  const s = plan.summary;
  return {
    total: s.create + s.update + s.recreate + s.restart + s.delete,
    etaMs: plan.etaMs,
    groups: plan.groups.map((g) => ({ name: g.name, canaries: plan.instances.some((i) => i.group === g.name && i.canary) ? g.canaries : 0, waves: g.waves })),
  };
}

/** `Examples:` at the end of a command's --help. */
function examples(cmd: Command, lines: string[]): Command {
  return cmd.addHelpText('after', `\nExamples:\n${lines.map((l) => `  ${l}`).join('\n')}`);
}

function positiveInt(text: string, what: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n <= 0) throw userError('number_malformed', `${what} '${text}' is not a positive whole number`);
  return n;
}


async function confirm(question: string): Promise<boolean> {
  const rl = createInterface({ input: process.stdin, output: process.stdout });
  try {
    const answer = await rl.question(question);
    return /^y(es)?$/i.test(answer.trim());
  } finally {
    rl.close();
  }
}

function withContext<T>(fn: (ctx: DirectorContext) => Promise<T>): Promise<T> {
  const ctx = openContext(directorHome());
  return fn(ctx).finally(() => ctx.close());
}

function deployInput(manifest: string, o: { cloudConfig?: string; var?: string[]; varsFile?: string[] }): DeployInput {
  return { manifestPath: manifest, cloudConfigPath: o.cloudConfig, vars: parseVars(o.var), varsFiles: o.varsFile ?? [] };
}

function manifestOptions(cmd: Command): Command {
  return cmd
    .option('--cloud-config <file>', 'cloud-config file (default: cloud-config.yml beside the manifest)')
    .option('-v, --var <name=value>', 'set a ((var)); repeatable', collect)
    .option('-l, --vars-file <file>', 'YAML file of ((var)) values; repeatable', collect);
}

export function buildProgram(io: Io, setExit: (code: number) => void): Command {
  const program = new Command('director')
    .description('Roll releases onto fleets of VMs across clouds: canaries, bounded waves, health checks.')
    .option('--debug', 'show stack traces for errors')
    .showHelpAfterError()
    .configureOutput({ writeOut: (s) => io.out(s.trimEnd()), writeErr: (s) => io.err(s.trimEnd()) })
    .exitOverride();
  program.addHelpText('after', `
Environment:
  DIRECTOR_HOME   state, keys and the local cloud (default ./.director)

Examples:
  director deploy deployments/hello.yml
  director vms --json
  director task 3 --follow
  director task 3 --vm web/0
  director events --since 2h
  source <(director completion bash)`);

  manifestOptions(program.command('deploy <manifest>'))
    .description('show the plan for a manifest, then roll it out')
    .option('-y, --yes', 'do not ask for confirmation')
    .option('--dry-run', 'show the plan and change nothing (same as `director plan`)')
    .option('--json', 'print events as JSON lines')
    .option('--verbose', 'print every step of every instance')
    .addHelpText('after', `
On a terminal a status line at the bottom shows the wave, instances in flight, done, failed and
the ETA while events scroll above it; without one, each event is one timestamped line.
NO_COLOR=1 turns colour off; FORCE_COLOR=1 turns it on without a terminal.`)
    .addHelpText('after', '\nExamples:\n  director deploy deployments/hello.yml --yes\n  director deploy deployments/hello.yml -v greeting=hi --dry-run\n  director deploy deployments/hello.yml --yes --json | jq -c \'select(.state == "failed")\'')
    .action(async (manifest: string, o) => {
      await withContext(async (ctx) => {
        if (o.dryRun) {
          const prepared = await prepare(ctx, deployInput(manifest, o));
          await prepared.providers.closeAll();
          for (const w of prepared.warnings) io.err(`warning: ${w}`);
          io.out(o.json ? JSON.stringify(prepared.plan) : renderPlan(prepared.plan));
          return;
        }
        const taskId = ctx.tasks.create('deploy', null, `deploy ${manifest}`);
        const prepared = await prepareInTask(ctx, taskId, deployInput(manifest, o));
        for (const w of prepared.warnings) io.err(`warning: ${w}`);
        if (!o.json) io.out(renderPlan(prepared.plan));
        if (!prepared.plan.noop && !o.yes) {
          const refuse = async (why: string) => {
            await prepared.providers.closeAll();
            ctx.tasks.setDeployment(taskId, prepared.plan.deployment);
            ctx.tasks.finish(taskId, 'cancelled', `${why}; nothing was changed`);
          };
          if (!io.isTty) {
            await refuse('no terminal to confirm on');
            throw userError('confirmation_required', 'not deploying: no terminal to confirm on', { hint: 'pass --yes to deploy without confirmation, or --dry-run to only see the plan' });
          }
          if (!(await confirm('\nDeploy? [y/N] '))) {
            await refuse('not confirmed');
            io.err('Cancelled; nothing was changed.');
            setExit(1);
            return;
          }
        }
        const started = Date.now();
        const view = new EventView({ out: io.out, term: terminal(io), json: Boolean(o.json), verbose: Boolean(o.verbose), plan: progressPlan(prepared.plan) });
        const onEvent = view.event.bind(view);
        // First Ctrl-C: start nothing new, let in-flight instances finish, record the task as
        // cancelled. A second one is never needed for a consistent state; it only stops waiting.
        const abort = new AbortController();
        let interrupts = 0;
        const onSigint = () => {
          interrupts++;
          if (interrupts === 1) {
            view.interject(() => io.err('\nCancelling: no new instances will start; waiting for in-flight ones to finish (Ctrl-C again to stop waiting).'));
            abort.abort();
          } else {
            view.finish();
            io.err('Stopped waiting. The task is closed by the next director command; rerun deploy to converge.');
            process.exit(130);
          }
        };
        process.on('SIGINT', onSigint);
        process.on('SIGTERM', onSigint);
        const outcome = await deploy(ctx, prepared, { taskId, signal: abort.signal, onEvent, onTask: (id) => { if (!o.json) io.out(`\nTask ${id}`); } }).finally(() => {
          view.finish();
          process.off('SIGINT', onSigint);
          process.off('SIGTERM', onSigint);
        });
        const task = ctx.tasks.get(outcome.taskId!)!;
        if (o.json) {
          io.out(JSON.stringify({ task: task.id, state: task.state, result: task.result, error: task.error, summary: outcome.plan.summary }));
        } else if (task.state === 'done') {
          io.out(`\nTask ${task.id} done in ${formatDuration(Date.now() - started)}: ${task.result}`);
          if (!outcome.plan.noop) io.out(`See the instances with: director vms -d ${outcome.plan.deployment}`);
        } else {
          io.err(`\nTask ${task.id} ${task.state}: ${task.error?.message ?? ''}`);
          if (task.error?.logTail?.length) io.err(['last output:', ...task.error.logTail.map((l) => `  ${l}`)].join('\n'));
          if (task.error?.hint) io.err(`hint: ${task.error.hint}`);
        }
        if (task.state === 'cancelled') setExit(130);
        else if (task.state !== 'done') setExit(1);
      });
    });

  manifestOptions(program.command('plan <manifest>'))
    .description('show what deploy would do, per instance, with reasons; changes nothing')
    .option('--json', 'print the plan as JSON')
    .option('--detailed-exitcode', 'exit 0 when there are no changes, 2 when there are, 1 on error')
    .addHelpText('after', '\nExamples:\n  director plan deployments/hello.yml\n  director plan deployments/hello.yml --detailed-exitcode || echo "changes pending (2) or error (1)"\n  director plan deployments/hello.yml --json > plan.json')
    .action(async (manifest: string, o) => {
      await withContext(async (ctx) => {
        const prepared = await prepare(ctx, deployInput(manifest, o));
        await prepared.providers.closeAll();
        for (const w of prepared.warnings) io.err(`warning: ${w}`);
        io.out(o.json ? JSON.stringify(prepared.plan, null, 2) : renderPlan(prepared.plan));
        if (o.detailedExitcode && !prepared.plan.noop) setExit(2);
      });
    });

  program
    .command('vms')
    .description('list instances with their VM, AZ, IPs, job state and release version (checked live over SSH)')
    .option('-d, --deployment <name>', 'only this deployment')
    .option('--json', 'print a JSON array')
    .addHelpText('after', '\nExamples:\n  director vms\n  director vms -d hello --json')
    .action(async (o) => {
      await withContext(async (ctx) => {
        const vms = await listVms(ctx, o.deployment);
        io.out(o.json ? JSON.stringify(vms, null, 2) : renderVms(vms));
      });
    });

  examples(
    program
      .command('tasks')
      .description('list recent tasks, newest first')
      .option('-r, --recent <n>', 'how many', '30')
      .option('-d, --deployment <name>', 'only this deployment')
      .option('-s, --state <state>', `only tasks in this state, or any of several: error,timeout (${TASK_STATES.join(', ')})`)
      .option('--json', 'print a JSON array'),
    ['director tasks', 'director tasks --state error --recent 5', 'director tasks -d hello --json'],
  ).action(async (o) => {
    await withContext(async (ctx) => {
      ctx.tasks.closeAbandoned();
      const list = ctx.tasks.list({ deployment: o.deployment, state: o.state ? parseStates(o.state) : undefined, limit: positiveInt(o.recent, '--recent') });
      io.out(o.json ? JSON.stringify(list, null, 2) : renderTasks(list));
    });
  });

  examples(
    program
      .command('task <id>')
      .description("show a task: its summary, events, per-VM logs or timeline; --follow streams it while it runs")
      .option('-f, --follow', 'stream new events (or log lines, with --vm / --debug) until the task ends; exit 0 if it is done, 1 otherwise')
      .option('--events', 'only the events, every step included')
      .option('--vm <instance>', "only this instance's log, e.g. web/0")
      .option('--debug', "every VM's log, interleaved as written, each line prefixed with its instance")
      .option('--timeline', 'one line per instance: when it started, reached each step, finished or failed')
      .option('--out <file>', 'with --timeline: write an HTML page with an SVG Gantt chart to this file')
      .option('--json', 'print JSON (with --follow: one JSON line per event or log row, then the outcome)'),
    [
      'director task 4',
      'director task 4 --follow                # in a second terminal while a deploy runs',
      'director task 4 --follow --vm web/0     # that instance\'s commands and output, live',
      'director task 4 --debug                 # every VM\'s log, interleaved',
      'director task 4 --timeline --out task-4.html',
      'director task 4 --follow --json | jq -c \'select(.state == "failed")\'',
    ],
  ).action(async (id: string, o, cmd: Command) => {
    // --debug is also the program's option (stack traces): commander hands it to the program.
    const debug = Boolean(cmd.optsWithGlobals().debug);
    const modes = [o.vm && '--vm', debug && '--debug', o.events && '--events', (o.timeline || o.out) && '--timeline'].filter(Boolean);
    if (modes.length > 1) throw userError('options_conflict', `task: ${modes.join(' and ')} cannot be combined`, { hint: 'pick one view of the task' });
    if ((o.timeline || o.out) && o.follow) throw userError('options_conflict', 'task: --timeline cannot be combined with --follow', { hint: 'follow the task, then ask for its timeline' });
    await withContext(async (ctx) => {
      ctx.tasks.closeAbandoned();
      const task = ctx.tasks.get(positiveInt(id, 'task id'));
      if (!task) throw userError('task_unknown', `no task ${id}`, { hint: 'director tasks lists them' });
      const vmUnknown = () => {
        const known = ctx.tasks.logInstances(task.id);
        return userError('task_vm_unknown', `task ${task.id} has no log for '${o.vm}'`, { hint: known.length ? `instances with logs: ${known.join(', ')}` : 'this task ran no command on any VM' });
      };

      if (o.follow) {
        const view = new EventView({ out: io.out, term: terminal(io), json: Boolean(o.json), verbose: Boolean(o.events) });
        let width = Math.max(5, ...ctx.tasks.logInstances(task.id).map((i) => i.length));
        let logLines = 0;
        const printLog = (l: LogRow) => {
          logLines++;
          if (o.json) return io.out(JSON.stringify(l));
          width = Math.max(width, l.instance.length);
          view.line(o.vm ? renderLogLine(l) : renderDebugLine(l, width));
        };
        const abort = new AbortController();
        const onSigint = () => abort.abort();
        process.on('SIGINT', onSigint);
        let final: TaskRow;
        try {
          final = await followTask(ctx.tasks, task.id, {
            event: (e) => (o.vm || debug ? (o.json ? undefined : view.track(e)) : view.event(e)),
            log: printLog,
          }, { logs: o.vm ? { vm: o.vm } : debug ? 'all' : 'none', signal: abort.signal });
        } finally {
          view.finish();
          process.off('SIGINT', onSigint);
        }
        if (abort.signal.aborted && !['done', 'error', 'cancelled', 'timeout'].includes(final.state)) {
          io.err(`Stopped following; task ${task.id} is still ${final.state} (director task ${task.id} --follow resumes).`);
          setExit(130);
          return;
        }
        if (o.vm && logLines === 0) throw vmUnknown();
        if (o.json) io.out(JSON.stringify({ task: final.id, state: final.state, result: final.result, error: final.error }));
        else {
          const outcome = renderOutcome(final, taskDurationMs(final));
          for (const l of outcome.out) io.out(l);
          if (outcome.err.length) io.err(outcome.err.join('\n'));
        }
        if (final.state !== 'done') setExit(1);
        return;
      }

      if (o.vm) {
        const logs = ctx.tasks.logs(task.id, o.vm);
        if (logs.length === 0) throw vmUnknown();
        io.out(o.json ? JSON.stringify(logs, null, 2) : renderLogs(logs));
        return;
      }
      if (debug) {
        const logs = ctx.tasks.logs(task.id);
        if (logs.length === 0) throw userError('task_no_logs', `task ${task.id} ran no command on any VM`, { hint: `director task ${task.id} shows its events` });
        const w = Math.max(...logs.map((l) => l.instance.length));
        io.out(o.json ? JSON.stringify(logs, null, 2) : logs.map((l) => renderDebugLine(l, w)).join('\n'));
        return;
      }
      const events = ctx.tasks.events(task.id);
      if (o.events) {
        io.out(o.json ? JSON.stringify(events, null, 2) : events.length ? events.map((e) => renderEvent(e, true)).join('\n') : 'No events.');
        return;
      }
      if (o.timeline || o.out) {
        const tl = buildTimeline(task, events);
        if (o.out) {
          writeFileSync(o.out, renderTimelineHtml(tl));
          io.err(`Wrote the timeline of task ${task.id} to ${o.out}`);
        }
        if (o.json) io.out(JSON.stringify(tl, null, 2));
        else if (!o.out || o.timeline) io.out(renderTimeline(tl));
        return;
      }
      io.out(o.json ? JSON.stringify({ ...task, events }, null, 2) : renderTask(task, events, ctx.tasks.logInstances(task.id)));
    });
  });

  examples(
    program
      .command('events')
      .description('who did what when: task starts and ends and stage-level events, across tasks, oldest first')
      .option('-d, --deployment <name>', 'only this deployment')
      .option('--since <time>', 'only events at or after this time: ISO (2026-01-31T03:00:00Z) or a duration back from now (2h, 30m, 1h30m, 7d)')
      .option('-r, --recent <n>', 'at most this many (the newest)', '100')
      .option('--json', 'print a JSON array'),
    ['director events --since 2h', 'director events -d hello --since 2026-01-31T02:00:00Z', 'director events --since 1d --json'],
  ).action(async (o) => {
    await withContext(async (ctx) => {
      const since = o.since ? parseSince(o.since, new Date()) : undefined;
      const limit = positiveInt(o.recent, '--recent');
      ctx.tasks.closeAbandoned();
      const { events, truncated } = eventsView(ctx.tasks, { deployment: o.deployment, since, limit });
      if (o.json) {
        io.out(JSON.stringify(events, null, 2));
        return;
      }
      io.out(renderHistory(events));
      if (truncated) io.err(`(only the newest ${limit}: --recent N shows more, --since narrows the window)`);
    });
  });

  examples(
    program
      .command('deployments')
      .description('list deployments: instance counts by recorded state, the last task, when it last changed')
      .option('--json', 'print a JSON array'),
    ['director deployments', 'director deployments --json'],
  ).action(async (o) => {
    await withContext(async (ctx) => {
      ctx.tasks.closeAbandoned();
      const list = deploymentsView(ctx.store, ctx.tasks);
      io.out(o.json ? JSON.stringify(list, null, 2) : renderDeployments(list));
    });
  });

  examples(
    program
      .command('instances <deployment>')
      .description("a deployment's instances: recorded state, live health (SSH, job state, health checks, drifted files), AZ, cloud, VM, version")
      .option('--no-health', 'only what the director recorded: no SSH, no health checks')
      .option('-v, --var <name=value>', 'a ((var)) of the deployed manifest, for its health checks; repeatable', collect)
      .option('-l, --vars-file <file>', 'YAML file of ((var)) values; repeatable', collect)
      .option('--json', 'print a JSON array'),
    ['director instances hello', 'director instances hello --no-health --json'],
  ).action(async (deployment: string, o) => {
    await withContext(async (ctx) => {
      const list = instancesView(ctx.store, deployment);
      if (o.health !== false) {
        const health = await instanceHealth(ctx, deployment, { vars: parseVars(o.var), varsFiles: o.varsFile ?? [] });
        for (const i of list) {
          const h = health.get(i.instance);
          if (h) Object.assign(i, { health: h.health, healthDetail: h.detail || undefined });
        }
      }
      io.out(o.json ? JSON.stringify(list, null, 2) : renderInstances(list));
    });
  });

  program
    .command('delete-deployment <name>')
    .description("stop a deployment's jobs, delete its VMs and forget it")
    .option('-y, --yes', 'do not ask for confirmation')
    .addHelpText('after', '\nExamples:\n  director delete-deployment hello\n  director delete-deployment hello --yes')
    .action(async (name: string, o) => {
      await withContext(async (ctx) => {
        const rows = ctx.store.instances(name);
        if (!o.yes) {
          if (!io.isTty) throw userError('confirmation_required', `not deleting '${name}': no terminal to confirm on`, { hint: 'pass --yes' });
          if (!(await confirm(`Delete deployment '${name}' and its ${rows.length} VM(s)? [y/N] `))) {
            io.err('Cancelled; nothing was changed.');
            setExit(1);
            return;
          }
        }
        const view = new EventView({ out: io.out, term: terminal(io), json: false, verbose: false, plan: { total: rows.length, etaMs: 0, groups: [] } });
        const { taskId, deleted } = await deleteDeployment(ctx, name, {
          onEvent: view.event.bind(view),
          onTask: (id) => io.out(`Task ${id}`),
        }).finally(() => view.finish());
        io.out(`Task ${taskId} done: deployment '${name}' deleted (${deleted} instance(s)).`);
      });
    });

  program
    .command('cancel <id>')
    .description('cancel a running task: no new instances start, in-flight ones finish')
    .addHelpText('after', '\nExamples:\n  director cancel 7\n  director cancel 7 && director task 7 --follow')
    .action(async (id: string) => {
      await withContext(async (ctx) => {
        ctx.tasks.closeAbandoned();
        const task = ctx.tasks.requestCancel(Number(id));
        io.out(`Task ${task.id} is ${task.state}: it stops after the instances in flight finish.`);
      });
    });

  program
    .command('locks')
    .description('list deployment locks and the tasks holding them')
    .option('--json', 'print JSON')
    .addHelpText('after', '\nExamples:\n  director locks\n  director locks --json')
    .action(async (o) => {
      await withContext(async (ctx) => {
        const locks = ctx.locks.list();
        io.out(o.json ? JSON.stringify(locks, null, 2) : locks.length ? table([['LOCK', 'TASK', 'PID', 'SINCE', 'EXPIRES'], ...locks.map((l) => [l.name, String(l.taskId), String(l.pid), l.acquiredAt, l.expiresAt])]) : 'No locks.');
      });
    });

  const lc = examples(program.command('local-cloud').description('the embedded cloud that hosts VMs on loopback'), ['director local-cloud status', 'director local-cloud stop']);
  lc.command('status')
    .description('is the local cloud running, and how many VMs does it host')
    .option('--json', 'print JSON')
    .addHelpText('after', '\nExamples:\n  director local-cloud status\n  director local-cloud status --json')
    .action(async (o) => {
      const client = await LocalCloudClient.connectIfRunning(directorHome());
      if (!client) {
        io.out(o.json ? JSON.stringify({ running: false }) : 'Local cloud: not running (it starts by itself on the next deploy).');
        return;
      }
      const status = await client.status();
      io.out(o.json ? JSON.stringify({ running: true, ...status }) : `Local cloud: running\n${Object.entries(status).map(([k, v]) => `  ${k}: ${typeof v === 'object' ? JSON.stringify(v) : v}`).join('\n')}`);
    });
  lc.command('stop')
    .description("power off every local VM (their jobs stop) and stop the local cloud; VMs boot again with it")
    .addHelpText('after', '\nExamples:\n  director local-cloud stop')
    .action(async () => {
      const client = await LocalCloudClient.connectIfRunning(directorHome());
      if (!client) {
        io.out('Local cloud: not running.');
        return;
      }
      await client.stop();
      io.out('Local cloud stopped.');
    });

  registerRepairCommands(program, io, setExit);
  registerLocalCloudFaults(lc, io);

  examples(
    program
      .command('completion <shell>')
      .description('print a completion script for bash or zsh, made from this program\'s commands and options'),
    [
      'source <(director completion bash)',
      'director completion bash > ~/.local/share/bash-completion/completions/director',
      'director completion zsh > "${fpath[1]}/_director"   # then restart zsh (compinit)',
    ],
  ).action((shell: string) => {
    const values = { state: TASK_STATES, shell: ['bash', 'zsh'] };
    if (shell === 'bash') io.out(bashCompletion(program, values).trimEnd());
    else if (shell === 'zsh') io.out(zshCompletion(program, values).trimEnd());
    else throw userError('shell_unknown', `no completion for '${shell}'`, { hint: 'director completion bash, or director completion zsh' });
  });

  return program;
}

export async function main(argv: string[], io: Io = defaultIo): Promise<number> {
  if (io === defaultIo) {
    // `director task 3 --follow --json | head -5`: the reader left. A command that only reads
    // stops quietly; one that changes things (a deploy) carries on without output, so a closed
    // pipe never leaves a rollout half done. Never a stack trace either way.
    const command = argv.slice(2).find((a) => !a.startsWith('-'));
    const changesThings = ['deploy', 'delete-deployment', 'repair', 'cancel'].includes(command ?? '');
    for (const stream of [process.stdout, process.stderr]) {
      stream.on('error', (e: NodeJS.ErrnoException) => {
        if (e.code !== 'EPIPE' && e.code !== 'ERR_STREAM_DESTROYED') throw e;
        if (!changesThings) process.exit(0);
      });
    }
  }
  let exit = 0;
  const program = buildProgram(io, (code) => { exit = code; });
  const debug = argv.includes('--debug');
  try {
    await program.parseAsync(argv);
    return exit;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 1;
    reportError(err, io, debug);
    return 1;
  }
}

function reportError(err: unknown, io: Io, debug: boolean): void {
  if (isDirectorError(err)) {
    const where = formatLocation(err.location);
    const msg = where && !err.message.startsWith(where) ? `${where}: ${err.message}` : err.message;
    io.err(`error: ${msg}`);
    if (err.hint) io.err(`hint: ${err.hint}`);
    if (debug) io.err(`(${err.errorClass} error ${err.code})\n${err.stack ?? ''}`);
    return;
  }
  io.err(`error: ${err instanceof Error ? err.message : String(err)}`);
  io.err(debug ? String((err as Error)?.stack ?? '') : 'hint: this is a bug in director; run again with --debug and report the stack trace');
}

