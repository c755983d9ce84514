/**
 * The thin shell: parse arguments, call one application service, render. Errors are caught once,
 * here, and mapped to exit codes: 0 success, 1 failure (bad input, a failed rollout, an
 * unreachable cloud), 2 changes pending (`plan --detailed-exitcode`), 130 interrupted.
 * Stack traces only with --debug.
 */
import { Command, CommanderError } from 'commander';
import { createInterface } from 'node:readline/promises';
import { openContext, directorHome, type DirectorContext } from '../app/context.js';
import { deleteDeployment } from '../app/delete.js';
import { deploy, prepare, prepareInTask, type DeployInput } from '../app/deploy.js';
import { listVms } from '../app/vms.js';
import { formatLocation, isDirectorError, userError } from '../errors.js';
import { LocalCloudClient } from '../local-cloud/client.js';
import type { EventRow } from '../tasks/tasks.js';
import { formatDuration, renderEvent, renderLogs, renderPlan, renderTask, renderTasks, renderVms, table } from './render.js';

interface Io {
  out: (s: string) => void;
  err: (s: string) => void;
  isTty: boolean;
}

const defaultIo: Io = {
  out: (s) => process.stdout.write(`${s}\n`),
  err: (s) => process.stderr.write(`${s}\n`),
  isTty: Boolean(process.stdin.isTTY && process.stdout.isTTY),
};

const collect = (value: string, previous: string[] = []) => [...previous, value];

function parseVars(list: string[] = []): Record<string, string> {
  const vars: Record<string, string> = {};
  for (const item of list) {
    const eq = item.indexOf('=');
    if (eq <= 0) throw userError('var_malformed', `--var '${item.split('=')[0]}' has no value`, { hint: 'write --var NAME=VALUE' });
    vars[item.slice(0, eq)] = item.slice(eq + 1);
  }
  return vars;
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
  director task 3 --vm web/0`);

  manifestOptions(program.command('deploy <manifest>'))
    .description('show the plan for a manifest, then roll it out')
    .option('-y, --yes', 'do not ask for confirmation')
    .option('--dry-run', 'show the plan and change nothing (same as `director plan`)')
    .option('--json', 'print events as JSON lines')
    .option('--verbose', 'print every step of every instance')
    .addHelpText('after', '\nExamples:\n  director deploy deployments/hello.yml --yes\n  director deploy deployments/hello.yml -v greeting=hi --dry-run')
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
        const onEvent = (e: EventRow) => {
          if (o.json) io.out(JSON.stringify(e));
          else {
            const line = renderEvent(e, o.verbose);
            if (line) io.out(line);
          }
        };
        // First Ctrl-C: start nothing new, let in-flight instances finish, record the task as
        // cancelled. A second one is never needed for a consistent state; it only stops waiting.
        const abort = new AbortController();
        let interrupts = 0;
        const onSigint = () => {
          interrupts++;
          if (interrupts === 1) {
            io.err('\nCancelling: no new instances will start; waiting for in-flight ones to finish (Ctrl-C again to stop waiting).');
            abort.abort();
          } else {
            io.err('Stopped waiting. The task is closed by the next director command; rerun deploy to converge.');
            process.exit(130);
          }
        };
        process.on('SIGINT', onSigint);
        process.on('SIGTERM', onSigint);
        const outcome = await deploy(ctx, prepared, { taskId, signal: abort.signal, onEvent, onTask: (id) => { if (!o.json) io.out(`\nTask ${id}`); } }).finally(() => {
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
    .description('list instances with their VM, AZ, IPs, job state and release version')
    .option('-d, --deployment <name>', 'only this deployment')
    .option('--json', 'print a JSON array')
    .action(async (o) => {
      await withContext(async (ctx) => {
        const vms = await listVms(ctx, o.deployment);
        io.out(o.json ? JSON.stringify(vms, null, 2) : renderVms(vms));
      });
    });

  program
    .command('tasks')
    .description('list recent tasks')
    .option('-r, --recent <n>', 'how many', '30')
    .option('-d, --deployment <name>', 'only this deployment')
    .option('--json', 'print a JSON array')
    .action(async (o) => {
      await withContext(async (ctx) => {
        ctx.tasks.closeAbandoned();
        const list = ctx.tasks.list({ deployment: o.deployment, limit: Number(o.recent) || 30 });
        io.out(o.json ? JSON.stringify(list, null, 2) : renderTasks(list));
      });
    });

  program
    .command('task <id>')
    .description("show a task's state, events and per-VM logs")
    .option('--vm <instance>', "only this instance's log, e.g. web/0")
    .option('--json', 'print JSON')
    .addHelpText('after', '\nExamples:\n  director task 4\n  director task 4 --vm web/0')
    .action(async (id: string, o) => {
      await withContext(async (ctx) => {
        ctx.tasks.closeAbandoned();
        const task = ctx.tasks.get(Number(id));
        if (!task) throw userError('task_unknown', `no task ${id}`, { hint: 'director tasks lists them' });
        if (o.vm) {
          const logs = ctx.tasks.logs(task.id, o.vm);
          if (logs.length === 0) {
            const known = ctx.tasks.logInstances(task.id);
            throw userError('task_vm_unknown', `task ${task.id} has no log for '${o.vm}'`, { hint: known.length ? `instances with logs: ${known.join(', ')}` : 'this task ran no command on any VM' });
          }
          io.out(o.json ? JSON.stringify(logs, null, 2) : renderLogs(logs));
          return;
        }
        const events = ctx.tasks.events(task.id);
        io.out(o.json ? JSON.stringify({ ...task, events }, null, 2) : renderTask(task, events, ctx.tasks.logInstances(task.id)));
      });
    });

  program
    .command('delete-deployment <name>')
    .description("stop a deployment's jobs, delete its VMs and forget it")
    .option('-y, --yes', 'do not ask for confirmation')
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
        const { taskId, deleted } = await deleteDeployment(ctx, name, {
          onEvent: (e) => { const l = renderEvent(e); if (l) io.out(l); },
          onTask: (id) => io.out(`Task ${id}`),
        });
        io.out(`Task ${taskId} done: deployment '${name}' deleted (${deleted} instance(s)).`);
      });
    });

  program
    .command('cancel <id>')
    .description('cancel a running task: no new instances start, in-flight ones finish')
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
    .action(async (o) => {
      await withContext(async (ctx) => {
        const locks = ctx.locks.list();
        io.out(o.json ? JSON.stringify(locks, null, 2) : locks.length ? table([['LOCK', 'TASK', 'PID', 'SINCE', 'EXPIRES'], ...locks.map((l) => [l.name, String(l.taskId), String(l.pid), l.acquiredAt, l.expiresAt])]) : 'No locks.');
      });
    });

  const lc = program.command('local-cloud').description('the embedded cloud that hosts VMs on loopback');
  lc.command('status')
    .description('is the local cloud running, and how many VMs does it host')
    .option('--json', 'print JSON')
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
    .action(async () => {
      const client = await LocalCloudClient.connectIfRunning(directorHome());
      if (!client) {
        io.out('Local cloud: not running.');
        return;
      }
      await client.stop();
      io.out('Local cloud stopped.');
    });

  return program;
}

export async function main(argv: string[], io: Io = defaultIo): Promise<number> {
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

