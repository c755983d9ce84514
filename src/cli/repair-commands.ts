/**
 * `director repair` (once, or on a schedule) and the local cloud's fault injection, which lets
 * operators and tests break a local deployment on purpose and watch repair fix it.
 */
import { Cron } from 'croner';
import type { Command } from 'commander';
import { appendFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { directorHome, openContext, type DirectorContext } from '../app/context.js';
import { repair, type RepairOutcome } from '../app/repair.js';
import { userError } from '../errors.js';
import { LocalCloudClient } from '../local-cloud/client.js';
import type { Problem } from '../repair/classify.js';
import type { EventRow } from '../tasks/tasks.js';
import { collect, parseVars } from './options.js';
import { renderEvent, table } from './render.js';

export interface CommandIo {
  out: (s: string) => void;
  err: (s: string) => void;
  isTty: boolean;
}


/** `90s`, `10m`, `2h`, or plain milliseconds. */
export function parseDuration(text: string): number {
  const m = /^(\d+)(ms|s|m|h)?$/.exec(text.trim());
  if (!m) throw userError('duration_invalid', `'${text}' is not a duration`, { hint: 'write e.g. 30s, 10m or 1h' });
  const n = Number(m[1]);
  return n * ({ ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] ?? 'ms'] ?? 1);
}

function renderProblems(problems: Problem[]): string {
  if (problems.length === 0) return 'No drift: every instance matches what was deployed.';
  return table([['PROBLEM', 'INSTANCE', 'VM', 'FIX', 'DETAIL'], ...problems.map((p) => [p.type, p.instance ?? '-', p.cid ?? '-', p.fix, p.detail])]);
}

export function registerRepairCommands(program: Command, io: CommandIo, setExit: (code: number) => void): void {
  program
    .command('repair <deployment>')
    .description('find drift (missing, unresponsive, broken, drifted, orphaned VMs) and fix what is safe')
    .option('--dry-run', 'report only: exit 0 when clean, 2 when drift was found')
    .option('-y, --yes', 'fix without asking')
    .option('--delete-orphans', 'also delete VMs tagged for the deployment that the director does not know')
    .option('--every <duration>', 'run again every DURATION (e.g. 10m) until stopped')
    .option('--cron <expression>', 'run on a cron schedule (e.g. "*/10 * * * *") until stopped')
    .option('--json', 'print the outcome as JSON')
    .option('-v, --var <name=value>', 'set a ((var)) of the deployed manifest; repeatable', collect)
    .option('-l, --vars-file <file>', 'YAML file of ((var)) values; repeatable', collect)
    .addHelpText('after', `
Exit codes: 0 clean (or everything repaired), 2 drift found (--dry-run), 1 something could not be
repaired or a meltdown stopped automatic repair, 3 skipped because a deploy holds the lock.

Examples:
  director repair hello --dry-run --json
  director repair hello --yes --delete-orphans
  director repair hello --yes --every 10m`)
    .action(async (deployment: string, o) => {
      if (!o.dryRun && !o.yes && !io.isTty) {
        throw userError('confirmation_required', `not repairing '${deployment}': no terminal to confirm on`, { hint: 'pass --yes to repair, or --dry-run to only report' });
      }
      const once = async (): Promise<RepairOutcome> => {
        const ctx = openContext(directorHome());
        try {
          let dryRun = Boolean(o.dryRun);
          if (!dryRun && !o.yes) {
            const check = await runOnce(ctx, deployment, { ...o, dryRun: true });
            if (check.problems.length === 0) return check;
            const { createInterface } = await import('node:readline/promises');
            const rl = createInterface({ input: process.stdin, output: process.stdout });
            const answer = await rl.question(`\nRepair ${check.problems.filter((p) => p.fix !== 'none').length} problem(s)? [y/N] `);
            rl.close();
            if (!/^y(es)?$/i.test(answer.trim())) return { ...check, exitCode: 1 };
            dryRun = false;
          }
          return await runOnce(ctx, deployment, { ...o, dryRun });
        } finally {
          ctx.close();
        }
      };
      const runOnce = async (ctx: DirectorContext, name: string, opts: { dryRun: boolean; deleteOrphans?: boolean; json?: boolean; var?: string[]; varsFile?: string[] }) => {
        const outcome = await repair(ctx, name, {
          dryRun: opts.dryRun,
          deleteOrphans: Boolean(opts.deleteOrphans),
          vars: parseVars(opts.var),
          varsFiles: opts.varsFile ?? [],
          onEvent: (e: EventRow) => {
            if (opts.json || e.stage === 'detect') return;
            const line = renderEvent(e);
            if (line) io.out(line);
          },
        });
        if (opts.json) {
          io.out(JSON.stringify({ deployment: name, task: outcome.taskId, dry_run: opts.dryRun, problems: outcome.problems, meltdown: outcome.meltdown, unrepaired: outcome.unrepaired, skipped: outcome.skipped, exit_code: outcome.exitCode }));
        } else if (outcome.skipped) {
          io.out(`Task ${outcome.taskId}: skipped, ${outcome.skipped}`);
        } else {
          io.out(`Task ${outcome.taskId}: ${opts.dryRun ? 'checked' : 'repaired'} ${name}`);
          io.out(renderProblems(outcome.problems));
          if (outcome.meltdown) io.err(`meltdown: too many instances are down at once; ${opts.dryRun ? 'a repair run would not act' : 'nothing was repaired automatically'}`);
          else if (!opts.dryRun && outcome.problems.length) io.out(outcome.exitCode === 0 ? 'Everything was repaired.' : `Not repaired: ${outcome.unrepaired.join(', ') || 'see the problems above (fix: none)'}`);
        }
        return outcome;
      };

      if (!o.every && !o.cron) {
        setExit((await once()).exitCode);
        return;
      }
      // Scheduled: each run is its own task; a run never overlaps the previous one.
      let stopping = false;
      let wake: (() => void) | null = null;
      const stop = () => {
        stopping = true;
        wake?.();
      };
      process.on('SIGINT', stop);
      process.on('SIGTERM', stop);
      try {
        if (o.cron) {
          let job: Cron;
          try {
            job = new Cron(o.cron, { protect: true }, async () => { await once().catch((e: unknown) => io.err(`repair run failed: ${e instanceof Error ? e.message : String(e)}`)); });
          } catch (e) {
            throw userError('cron_invalid', `--cron '${o.cron}': ${e instanceof Error ? e.message : String(e)}`, { hint: 'five fields: minute hour day month weekday, e.g. "*/10 * * * *"' });
          }
          io.out(`Repairing ${deployment} on schedule '${o.cron}' (next: ${job.nextRun()?.toISOString() ?? 'never'}); Ctrl-C stops.`);
          await new Promise<void>((resolve) => (wake = resolve));
          job.stop();
        } else {
          const every = parseDuration(o.every);
          io.out(`Repairing ${deployment} every ${o.every}; Ctrl-C stops.`);
          while (!stopping) {
            await once().catch((e: unknown) => io.err(`repair run failed: ${e instanceof Error ? e.message : String(e)}`));
            if (stopping) break;
            // A ref'd timer: it is what keeps the process alive between runs.
            await new Promise<void>((resolve) => {
              const timer = setTimeout(resolve, every);
              wake = () => {
                clearTimeout(timer);
                resolve();
              };
            });
          }
        }
      } finally {
        process.off('SIGINT', stop);
        process.off('SIGTERM', stop);
      }
    });
}

/** Fault injection on local VMs: break a deployment on purpose, behind the director's back. */
export function registerLocalCloudFaults(localCloud: Command, io: CommandIo): void {
  const client = async () => {
    const c = await LocalCloudClient.connectIfRunning(directorHome());
    if (!c) throw userError('local_cloud_not_running', 'the local cloud is not running', { hint: 'it starts with the first deploy to a local AZ' });
    return c;
  };
  /** A cid (`local-…`) or an instance name (`web/0`, looked up in the director's records). */
  const resolve = async (target: string, deployment?: string) => {
    const c = await client();
    if (target.startsWith('local-')) {
      const vm = await c.getVm(target);
      if (!vm) throw userError('vm_unknown', `the local cloud has no VM ${target}`, { hint: 'director local-cloud vms lists them' });
      return { c, vm };
    }
    const ctx = openContext(directorHome());
    try {
      const deployments = deployment ? [deployment] : ctx.store.deployments().map((d) => d.name);
      for (const d of deployments) {
        const row = ctx.store.instances(d).find((i) => `${i.group}/${i.index}` === target);
        if (row?.vmCid) {
          const vm = await c.getVm(row.vmCid);
          if (vm) return { c, vm };
        }
      }
    } finally {
      ctx.close();
    }
    throw userError('vm_unknown', `no local VM for '${target}'`, { hint: 'give a VM cid (director local-cloud vms) or an instance name like web/0, with -d DEPLOYMENT' });
  };
  const target = (cmd: Command) => cmd.option('-d, --deployment <name>', 'the deployment whose instance TARGET names');

  localCloud
    .command('vms')
    .description('list the local VMs with their addresses and tags')
    .option('--json', 'print JSON')
    .action(async (o) => {
      const vms = await (await client()).listVms();
      io.out(o.json ? JSON.stringify(vms, null, 2) : table([['CID', 'IP', 'STATE', 'TAGS'], ...vms.map((v) => [v.cid, v.ip, v.state, Object.entries(v.tags).map(([k, val]) => `${k}=${val}`).join(' ')])]));
    });
  target(localCloud.command('delete-vm <target>').description('fault: delete a VM behind the director\'s back (TARGET: cid or instance)')).action(async (t: string, o) => {
    const { c, vm } = await resolve(t, o.deployment);
    await c.deleteVm(vm.cid);
    io.out(`deleted ${vm.cid} (${vm.ip})`);
  });
  target(localCloud.command('stop-ssh <target>').description('fault: stop a VM\'s SSH endpoint; the VM and its jobs keep running')).action(async (t: string, o) => {
    const { c, vm } = await resolve(t, o.deployment);
    await c.setSsh(vm.cid, false);
    io.out(`SSH of ${vm.cid} (${vm.ip}) stopped`);
  });
  target(localCloud.command('start-ssh <target>').description('bring a VM\'s SSH endpoint back')).action(async (t: string, o) => {
    const { c, vm } = await resolve(t, o.deployment);
    await c.setSsh(vm.cid, true);
    io.out(`SSH of ${vm.cid} (${vm.ip}) started`);
  });
  target(localCloud.command('kill-job <target> <job>').description('fault: kill a job\'s processes with SIGKILL')).action(async (t: string, job: string, o) => {
    const { vm } = await resolve(t, o.deployment);
    let pid: number;
    try {
      pid = Number(readFileSync(join(vm.root, 'director', 'run', `${job}.pid`), 'utf8').trim());
    } catch {
      throw userError('job_unknown', `${vm.cid} has no running job '${job}'`, { hint: 'job names are those of the release, e.g. web' });
    }
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      process.kill(pid, 'SIGKILL');
    }
    io.out(`killed ${job} (pid ${pid}) on ${vm.cid}`);
  });
  target(localCloud.command('edit-file <target> <path>').description('fault: append to a file on the VM (PATH relative to the VM user\'s home)'))
    .option('--append <text>', 'what to append', '# edited behind the director\'s back\n')
    .action(async (t: string, path: string, o) => {
      const { vm } = await resolve(t, o.deployment);
      if (path.split('/').includes('..')) throw userError('path_invalid', `'${path}' leaves the VM's home`);
      appendFileSync(join(vm.root, path), o.append);
      io.out(`appended to ${path} on ${vm.cid}`);
    });
  localCloud
    .command('create-vm')
    .description('fault: create a VM carrying a deployment\'s tags that the director does not know (an orphan)')
    .requiredOption('-d, --deployment <name>', 'the deployment whose tags it carries')
    .action(async (o) => {
      const ctx = openContext(directorHome());
      try {
        const vm = await (await LocalCloudClient.ensure(ctx.home)).createVm({ tags: { director: ctx.directorId, deployment: o.deployment, instance_group: 'web', index: '99' }, authorizedKeys: [ctx.keys.publicKey] });
        io.out(`created ${vm.cid} (${vm.ip}) with ${o.deployment}'s tags`);
      } finally {
        ctx.close();
      }
    });
}
